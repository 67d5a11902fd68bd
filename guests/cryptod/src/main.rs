//! cryptod guest. Hosted target: a Linux process started by the launcher.
#![forbid(unsafe_code)]

fn main() {
    let mut p = portcullis_hosted::HostedPlatform::from_env().unwrap_or_else(|e| {
        eprintln!("cryptod: cannot start: {e}");
        std::process::exit(2)
    });
    if let Err(e) = portcullis_apps::cryptod::run(&mut p) {
        eprintln!("cryptod: stopped: {e}");
        std::process::exit(1);
    }
}
