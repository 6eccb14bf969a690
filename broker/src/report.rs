//! How errors read to a person: one line, each cause after the one it explains
//! (`failed to start the broker: failed to open the journal: segment … is corrupt …`).
//! Logs, ERROR frames and the command-line programs all use it, so no cause is printed
//! twice and none is left out. A program's `--verbose` adds the causes one per line and
//! the backtrace (captured when `RUST_BACKTRACE=1`).

use std::error::Error;

/// The error and its causes on one line, joined by `: `; a cause's own line breaks are
/// folded (` | `) so the result stays one line.
pub fn error_chain(e: &dyn Error) -> String {
    let mut parts = vec![fold(&e.to_string())];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(fold(&c.to_string()));
        cur = c.source();
    }
    parts.join(": ")
}

fn fold(s: &str) -> String {
    if !s.contains('\n') {
        return s.to_string();
    }
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// What a command-line program prints when it fails: `error: ` and the one-line chain;
/// with `verbose` also each cause on its own line and the backtrace (when one was
/// captured), as `detail` (anyhow's `{:?}`) renders them.
pub fn cli_failure(e: &dyn Error, verbose: bool, detail: impl FnOnce() -> String) -> String {
    let line = format!("error: {}", error_chain(e));
    if verbose {
        format!("{line}\n\n{}", detail())
    } else {
        line
    }
}

/// A command-line program's exit: 0, or its failure printed as [`cli_failure`] and 1.
/// `verbose` is the program's `--verbose` flag: `RUST_BACKTRACE` alone does not turn the
/// one line into a report, since many machines set it for every program.
pub fn exit_code<E>(result: Result<(), E>, verbose: bool) -> std::process::ExitCode
where
    E: AsRef<dyn Error> + std::fmt::Debug,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli_failure(e.as_ref(), verbose, || format!("{e:?}")));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to open the journal")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn given_nested_causes_should_join_them_on_one_line() {
        let e = Outer(std::io::Error::other("disk on fire\nsecond line"));
        assert_eq!(error_chain(&e), "failed to open the journal: disk on fire | second line");
    }
}
