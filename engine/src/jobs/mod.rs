//! Jobs: what one is (statuses, route, the public object, its typed input), how a request
//! becomes one (intake), the state machine that moves it (lifecycle), where it may run (routing and
//! the circuit breaker), and the watchdog that bounds each of its steps.

pub mod input;
pub mod intake;
pub mod job;
pub mod lifecycle;
pub mod routing;
pub mod watchdog;
