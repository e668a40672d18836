//! RFC 6455 conformance (issue 5): the Autobahn TestSuite's server cases,
//! driven by kosoku through `scripts/autobahn.sh`, against the echo endpoint
//! of the binary under test. Every case of sections 1-7 and 10 must have run
//! and passed. Needs `pip install kosoku` (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

/// The required sections, and the fewest cases each has in the suite (so a
/// selection that silently ran nothing cannot pass).
const REQUIRED: &[(&str, usize)] =
    &[("1", 16), ("2", 11), ("3", 7), ("4", 10), ("5", 20), ("6", 145), ("7", 37), ("10", 1)];

/// The script's own bound is 600 s; the run takes seconds.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn autobahn_sections_1_to_7_and_10_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::temp_dir().join(format!("switchboard-autobahn-{}", std::process::id()));
    let reports = out.join("reports");
    let summary = out.join("summary.md");
    std::fs::create_dir_all(&out).expect("output dir");

    let run = Command::new("bash")
        .arg(root.join("scripts/autobahn.sh"))
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .env("AUTOBAHN_REPORTS", &reports)
        // Keep docs/ untouched: the test only checks.
        .env("AUTOBAHN_DOC", &summary)
        .env("AUTOBAHN_CASES", "1.* 2.* 3.* 4.* 5.* 6.* 7.* 10.*")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the Autobahn run finishes in time")
        .expect("run scripts/autobahn.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "autobahn.sh failed:\n{stdout}\n{stderr}");

    // Check the report itself rather than trusting the exit code alone.
    let index = std::fs::read_to_string(reports.join("index.json")).expect("index.json");
    let index: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(&index).expect("index.json is JSON");
    let mut per_section: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for (case, verdict) in index.values().flatten() {
        let section = case.split('.').next().unwrap_or_default().to_owned();
        *per_section.entry(section).or_default() += 1;
        let behavior = verdict["behavior"].as_str().unwrap_or("?");
        let close = verdict["behaviorClose"].as_str().unwrap_or("?");
        let passed = matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL")
            && matches!(close, "OK" | "INFORMATIONAL");
        if !passed {
            failed.push(format!("{case}: {behavior} / close {close}"));
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}\n{stdout}", failed.join("\n"));
    for (section, fewest) in REQUIRED {
        let ran = per_section.get(*section).copied().unwrap_or(0);
        assert!(ran >= *fewest, "section {section}: {ran} cases ran, expected {fewest}");
    }
    let summary = std::fs::read_to_string(&summary).expect("summary written");
    assert!(summary.contains("| **all** |"), "{summary}");
    let _ = std::fs::remove_dir_all(&out);
}
