//! unlocker guest. Hosted target: a Linux process started by the launcher;
//! its console is the terminal.
#![forbid(unsafe_code)]

use portcullis_apps::unlocker::{run, Outcome};

fn main() {
    let mut p = portcullis_hosted::HostedPlatform::from_env().unwrap_or_else(|e| {
        eprintln!("unlocker: cannot start: {e}");
        std::process::exit(2)
    });
    match run(&mut p) {
        Ok(Outcome::Unlocked) => {}
        Ok(Outcome::GaveUp) => {
            println!("unlocker: giving up");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("unlocker: stopped: {e}");
            std::process::exit(1);
        }
    }
}
