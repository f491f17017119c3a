//! `virtctl` (also `kubectl virt`): see the library for the commands.

use std::process::ExitCode;

fn main() -> ExitCode {
    virtctl::main()
}
