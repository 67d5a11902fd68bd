//! The lifecycle scenario's keys steps (to be written: issue 12).

use super::Ctx;
use crate::Failure;

pub(crate) fn steps(_cx: &mut Ctx) -> Result<(), Failure> {
    Ok(())
}
