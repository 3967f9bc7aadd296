//! What coreq tells its operators: logs (`logging`), and metrics (`catalog` lists and records
//! them, `exposition` serves them as Prometheus text or On-Premises JSON).

pub mod catalog;
pub mod exposition;
pub mod logging;

pub use logging::{follow_settings, init};
