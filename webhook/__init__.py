"""The mutating admission webhook: pure mutation, validation, policy and the HTTPS server."""
