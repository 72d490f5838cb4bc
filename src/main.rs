//! The `infergate` binary: the command line of `infergate::cli`.

fn main() -> std::process::ExitCode {
    infergate::cli::main()
}
