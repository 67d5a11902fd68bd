//! entropyd guest. Hosted target: a Linux process started by the launcher.
#![forbid(unsafe_code)]

fn main() {
    let mut p = portcullis_hosted::HostedPlatform::from_env().unwrap_or_else(|e| {
        eprintln!("entropyd: cannot start: {e}");
        std::process::exit(2)
    });
    if let Err(e) = portcullis_apps::entropyd::run(&mut p) {
        eprintln!("entropyd: stopped: {e}");
        std::process::exit(1);
    }
}
