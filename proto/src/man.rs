//! Manual pages of the command-line tools, made from their argument
//! definitions so that they cannot drift from what the tools accept.

use std::path::{Path, PathBuf};

/// Writes `NAME.1` for `command` and `NAME-SUB.1` for each visible
/// subcommand, recursively, into `dir` (created if missing); returns the
/// files written.
pub fn write_pages(command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let name = command.get_name().to_owned();
    write_page(command, &name, dir, &mut written)?;
    Ok(written)
}

fn write_page(command: clap::Command, name: &str, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let command = command.name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_page(sub.clone(), &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page() {
        let command = clap::Command::new("tool")
            .about("a tool")
            .subcommand(
                clap::Command::new("secret")
                    .about("secrets")
                    .subcommand(clap::Command::new("put").about("store").arg(clap::arg!(--name <NAME> "the name"))),
            )
            .subcommand(clap::Command::new("internal").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(command, &dir.path().join("man1")).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tool.1", "tool-secret.1", "tool-secret-put.1"]);
        let put = std::fs::read_to_string(&written[2]).unwrap();
        assert!(put.contains(".TH tool-secret-put 1"), "{put}");
        assert!(put.contains("\\-\\-name"), "{put}");
    }
}
