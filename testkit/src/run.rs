//! What one run of a command-line program under test did (`weft`, `terraform`).

use serde_json::Value;

#[derive(Debug)]
pub struct Run {
    /// The program, for failure messages.
    pub program: &'static str,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The outcome of a finished process.
    pub fn of(program: &'static str, out: &std::process::Output) -> Run {
        Run {
            program,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the run exited 0, showing its output when not.
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "{} failed:\n{}\n{}",
            self.program, self.stdout, self.stderr
        );
        self
    }

    /// Its standard output as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}
