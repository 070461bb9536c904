//! Generates the kbs.v1 Rust code with a pure-Rust protobuf compiler, so no
//! `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kbs/v1/kbs.proto");
    let fds = protox::compile(["kbs/v1/kbs.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
