//! policy_pd guest. Hosted target: a Linux process started by the launcher.
#![forbid(unsafe_code)]

fn main() {
    let mut p = portcullis_hosted::HostedPlatform::from_env().unwrap_or_else(|e| {
        eprintln!("policy_pd: cannot start: {e}");
        std::process::exit(2)
    });
    match portcullis_apps::policy_pd::run(&mut p) {
        Ok(0) => {}
        Ok(failed) => {
            println!("policy_pd: {failed} selftest check(s) failed");
            std::process::exit(4);
        }
        Err(e) => {
            eprintln!("policy_pd: stopped: {e}");
            std::process::exit(1);
        }
    }
}
