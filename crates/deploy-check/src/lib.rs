//! Tests only (see `tests/`): the deployment files checked against the settings code.
