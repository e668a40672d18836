//! The fuzz targets' checks on stable (issue 5): every seed in
//! `fuzz/corpus/TARGET/` and every input that once crashed a target, kept in
//! `fuzz/regressions/TARGET/`, goes through the same code as the libFuzzer
//! targets (`fuzz/checks.rs`), so a fixed crash stays fixed without nightly.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../../fuzz/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The input files of one directory (hidden files and READMEs skipped).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_and_regressions_pass_every_check() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (target, check) in checks::TARGETS {
        let mut seeds = 0;
        for kind in ["corpus", "regressions"] {
            for path in inputs(&fuzz_dir().join(kind).join(target)) {
                let data = std::fs::read(&path).expect("read input");
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    failures.push(format!("{}: {message}", path.display()));
                }
                seeds += usize::from(kind == "corpus");
                ran += 1;
            }
        }
        assert!(seeds > 0, "no corpus for fuzz target {target}");
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A few inputs of the kinds fuzzers find, checked here even before a
/// fuzzer has run: truncated and oversized headers, deep nesting, odd escapes.
#[test]
fn hand_written_edge_cases_pass_every_check() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested_msg = format!(r#"{{"dst":"b","msg":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
    let cases: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\xff\xfe\xfd",
        deep.as_bytes(),
        nested_msg.as_bytes(),
        br#"{"type":"dm","to":"","text":""}"#,
        br#"{"type":"dm","id":null,"to":"b","text":"t"}"#,
        br#"{"dst":"b","msg":"\u0000\b\f\n\r\t\/"}"#,
        br#"{"dst":"\ud83d\ude00","msg":"\ud83d\ude00"}"#,
        b"\x01\xff",
        b"\x02\x00\x01r",
        b"max_message_bytes = 18446744073709551615\n",
        b"listen = \"[::1]:0\"\nbacklog = 4294967295\n",
    ];
    for data in cases {
        for (target, check) in checks::TARGETS {
            let outcome = catch_unwind(AssertUnwindSafe(|| check(data)));
            assert!(outcome.is_ok(), "{target} failed on {:?}", String::from_utf8_lossy(data));
        }
    }
}
