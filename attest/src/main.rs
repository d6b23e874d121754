//! `enclaveid-attest`: parse arguments, set up logging, run. See the library's `cli` module.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    enclaveid_attest::cli::main()
}
