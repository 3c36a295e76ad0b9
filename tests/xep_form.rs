//! Every document of xep/ passes the XSF's own checks of a submission:
//! DTD validity (xmllint), rendering with the XSF stylesheet without a
//! warning (xsltproc xep.xsl), and XEP-0001 conformance
//! (validate-xep0001-conformance.sh). The XSF's files are kept unchanged
//! in tools/xsf (or the folder named by XSF_TOOLS) and copied next to each
//! document, as the XSF editor runs them. Without xmllint or xsltproc
//! (scripts/test installs both), the test says so and checks nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::xep::XEPS;

const XSF_FILES: [&str; 4] = ["xep.dtd", "xep.ent", "xep.xsl", "validate-xep0001-conformance.sh"];

fn xsf_tools() -> PathBuf {
    std::env::var_os("XSF_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/xsf"))
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_xep_passes_the_xsf_checks() {
    let tools = xsf_tools();
    let missing: Vec<String> = ["xmllint", "xsltproc"]
        .into_iter()
        .filter(|t| !have(t))
        .map(str::to_owned)
        .chain(XSF_FILES.iter().filter(|f| !tools.join(f).is_file()).map(|f| tools.join(f).display().to_string()))
        .collect();
    if !missing.is_empty() {
        eprintln!("THE XSF CHECKS DID NOT RUN: missing {} (set XSF_TOOLS to the XSF's xeps tooling)", missing.join(", "));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for file in XSF_FILES {
        std::fs::copy(tools.join(file), dir.path().join(file)).unwrap();
    }
    for (path, content) in XEPS {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        std::fs::write(dir.path().join(name), content).unwrap();

        let valid = run(dir.path(), "xmllint", &["--nonet", "--noout", "--noent", "--loaddtd", "--valid", name]);
        assert!(valid.status.success() && valid.stderr.is_empty(), "{path} is not valid:\n{}", text(&valid.stderr));

        let html = run(dir.path(), "xsltproc", &["xep.xsl", name]);
        assert!(html.status.success(), "{path} does not render:\n{}", text(&html.stderr));
        assert!(html.stderr.is_empty(), "{path} renders with warnings:\n{}", text(&html.stderr));
        assert!(text(&html.stdout).contains("<html"), "{path} renders no HTML");

        let conformance = run(dir.path(), "bash", &["validate-xep0001-conformance.sh", name]);
        assert!(
            conformance.status.success(),
            "{path} fails XEP-0001 conformance:\n{}{}",
            text(&conformance.stdout),
            text(&conformance.stderr)
        );
    }
    eprintln!("the XSF checks ran on {} documents with the tools of {}", XEPS.len(), tools.display());
}
