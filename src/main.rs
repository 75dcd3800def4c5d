//! The modelmux binary; everything it does starts in `modelmux::start`.

fn main() -> std::process::ExitCode {
    modelmux::start::main()
}
