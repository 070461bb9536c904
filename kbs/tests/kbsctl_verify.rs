//! `kbsctl verify` on captured hardware reports: claims on stdout and exit 0,
//! or `rejected: <reason>` on stderr and exit 2; exit 1 for usage errors.
//! And kbsctl in a shell: a closed stdout, completions, `--version`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    let dir = std::env::var_os("KBS_TEST_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"));
    assert!(dir.join("virtee-sev").is_dir(), "test vectors not found at {}: set KBS_TEST_VECTORS", dir.display());
    dir
}

fn kbsctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kbsctl")).args(args).output().unwrap()
}

fn path(rel: &str) -> String {
    vectors().join(rel).display().to_string()
}

/// `kbsctl verify` of the captured Milan report, at a time its VCEK is valid.
fn milan_args() -> [String; 9] {
    [
        "verify".into(),
        "--tee".into(),
        "snp".into(),
        "--evidence".into(),
        path("virtee-sev/report_milan.bin"),
        "--cert".into(),
        path("virtee-sev/vcek_milan.der"),
        "--time".into(),
        "2026-11-28T00:00:00Z".into(),
    ]
}

#[test]
fn milan_report_verifies_and_prints_claims() {
    let args = milan_args();
    let out = kbsctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "snp");
    assert_eq!(
        claims["measurement"],
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(claims["debug"], false);
}

#[test]
fn hex_report_is_accepted_too() {
    let out = kbsctl(&[
        "verify",
        "--tee",
        "snp",
        "--evidence",
        &path("virtee-sev/report_milan.hex"),
        "--cert",
        &path("virtee-sev/vcek_milan.der"),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn vlek_reports_verify_with_the_built_in_asvk_in_their_validity() {
    let base = [
        "verify",
        "--tee",
        "snp",
        "--evidence",
        &path("trustee/snp/test-vlek-report.bin"),
        "--cert",
        &path("trustee/snp/test-vlek.der"),
    ]
    .map(String::from);
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        kbsctl(&args)
    };
    let chain = path("trustee/snp/milan_ask_ark_asvk.pem");
    let ok = run(&["--chain", &chain, "--time", "2025-06-01T00:00:00Z"]);
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&ok.stderr));
    let expired = run(&["--chain", &chain, "--time", "2026-11-28T00:00:00Z"]);
    assert_eq!(expired.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&expired.stderr).starts_with("rejected: certificate_expired: "));
    // AMD's ASVKs are built in: no --chain needed.
    let built_in = run(&["--time", "2025-06-01T00:00:00Z"]);
    assert_eq!(built_in.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&built_in.stderr));
    assert_eq!(ok.stdout, built_in.stdout);
}

#[test]
fn tampered_report_is_rejected_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = std::fs::read(vectors().join("virtee-sev/report_milan.bin")).unwrap();
    report[0x90] ^= 1;
    let tampered = dir.path().join("report.bin");
    std::fs::write(&tampered, &report).unwrap();
    let out = kbsctl(&[
        "verify",
        "--tee",
        "snp",
        "--evidence",
        tampered.to_str().unwrap(),
        "--cert",
        &path("virtee-sev/vcek_milan.der"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: signature_invalid: "));
}

#[test]
fn usage_and_io_errors_exit_1() {
    let out = kbsctl(&["verify", "--tee", "snp", "--evidence", "/nonexistent", "--cert", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    let out = kbsctl(&[
        "verify",
        "--tee",
        "snp",
        "--evidence",
        &path("virtee-sev/report_milan.bin"),
        "--cert",
        &path("virtee-sev/vcek_milan.der"),
        "--time",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// A reader that goes away (`kbsctl verify ... | head -0`) ends the command
/// quietly, as it does `ls`: no panic, no message, exit 141 (what a shell
/// reports for a process ended by SIGPIPE).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kbsctl"))
        .args(milan_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.code(), Some(141));
}

/// `kbsctl completion SHELL` prints a script the shell accepts, naming the
/// subcommands; `--version` names the git revision.
#[test]
fn completions_and_version() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef kbsctl"), ("fish", "complete -c kbsctl")] {
        let out = kbsctl(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}");
        for sub in ["secret", "policy", "verify", "audit"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let bash = kbsctl(&["completion", "bash"]).stdout;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kbsctl.bash");
    std::fs::write(&file, bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(kbsctl(&["completion", "tcsh"]).status.code(), Some(1), "an unknown shell is a usage error");

    // Manual pages: one per subcommand, made from the same definitions.
    let man = dir.path().join("man1");
    let out = kbsctl(&["man", "--dir", man.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let put = std::fs::read_to_string(man.join("kbsctl-secret-put.1")).unwrap();
    assert!(put.contains(".TH kbsctl-secret-put 1") && put.contains("\\-\\-from\\-file"), "{put}");
    for page in ["kbsctl.1", "kbsctl-verify.1", "kbsctl-audit-verify.1", "kbsctl-model-encrypt.1"] {
        assert!(man.join(page).is_file(), "{page}");
    }

    let version = String::from_utf8(kbsctl(&["--version"]).stdout).unwrap();
    let revision = version.trim().strip_prefix("kbsctl 0.1.0 (").and_then(|v| v.strip_suffix(')')).unwrap_or_default();
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
}

/// Every subcommand's `--help` ends with the settings and the exit codes,
/// not only the top level's.
#[test]
fn every_help_names_the_exit_codes() {
    let cases: [&[&str]; 5] = [
        &["--help"],
        &["secret", "list", "--help"],
        &["audit", "query", "--help"],
        &["model", "inspect", "--help"],
        &["verify", "--help"],
    ];
    for args in cases {
        let out = kbsctl(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Exit codes:") && help.contains("141  stdout was closed"), "{args:?}: {help}");
        assert!(help.contains("KBS_ADMIN_URL"), "{args:?}: {help}");
    }
}

/// Colour only on a terminal, and never with `NO_COLOR`: a usage error is
/// coloured under a pseudo-terminal (`script`), plain when piped or when
/// `NO_COLOR` is set.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let piped = kbsctl(&["--no-such-flag"]);
    assert_eq!(piped.status.code(), Some(1));
    assert!(!piped.stderr.contains(&0x1b), "{}", String::from_utf8_lossy(&piped.stderr));
    let on_a_terminal = |no_color: bool| {
        let mut command = Command::new("script");
        command
            .args(["-qec", &format!("{} --no-such-flag", env!("CARGO_BIN_EXE_kbsctl")), "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("CLICOLOR")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("NO_COLOR");
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let out = command.output().expect("script(1), from util-linux");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("--no-such-flag"), "{text}");
        text
    };
    assert!(on_a_terminal(false).contains('\x1b'), "no colour on a terminal");
    assert!(!on_a_terminal(true).contains('\x1b'), "colour despite NO_COLOR");
}
