//! What a command's failure says and the exit code it ends with: 1 aborted (or rolled back),
//! 2 bad usage (nothing was changed), 3 no nginx-shift answered, 4 a canary held at a quiet
//! step.

use crate::client::ClientError;
use crate::fleet::store::StoreError;
use crate::fleet::FleetError;
use crate::plan::PlanError;

/// A command's failure: what to say, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub const EXIT_ABORTED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
/// A canary step that saw too little traffic for a verdict, held as `--on-quiet hold` says.
pub const EXIT_QUIET: u8 = 4;

impl Failure {
    pub fn aborted(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: EXIT_ABORTED,
            error: error.into(),
        }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }
}

fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        // Something other than nginx-shift answering is as good as nothing answering.
        ClientError::Unreachable { .. } | ClientError::Unexpected { .. } => EXIT_UNREACHABLE,
        ClientError::BadName { .. } => EXIT_USAGE,
        ClientError::Api {
            status: 400 | 404 | 405 | 413,
            ..
        } => EXIT_USAGE,
        _ => EXIT_ABORTED,
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            code: client_exit_code(&error),
            error: error.into(),
        }
    }
}

impl From<FleetError> for Failure {
    fn from(error: FleetError) -> Failure {
        let code = match &error {
            FleetError::Plan(_) => EXIT_USAGE,
            FleetError::Client(cause) => client_exit_code(cause),
            FleetError::RolledBack { cause, .. } if cause.is_unreachable() => EXIT_UNREACHABLE,
            FleetError::RolledBack { .. } | FleetError::Split { .. } => EXIT_ABORTED,
            FleetError::Desired(_) => EXIT_USAGE,
            FleetError::Partial(_) => EXIT_ABORTED,
            FleetError::Store(cause) => store_exit_code(cause),
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        // Something other than etcd answering is as good as nothing answering.
        StoreError::Unreachable { .. } | StoreError::NotEtcd { .. } => EXIT_UNREACHABLE,
        StoreError::Tls { .. } | StoreError::HalfIdentity => EXIT_USAGE,
        _ => EXIT_ABORTED,
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure {
            code: store_exit_code(&error),
            error: error.into(),
        }
    }
}

impl From<PlanError> for Failure {
    fn from(error: PlanError) -> Failure {
        let code = match error {
            PlanError::UnknownPeer { .. } => EXIT_USAGE,
            _ => EXIT_ABORTED,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}
