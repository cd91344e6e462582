"""The one base exception of the registration library."""


class RegistrationError(Exception):
    """Anything the shared registration library refuses: a bad token, CSR, fact or template."""

    code = "registration_error"


class TokenFormatError(RegistrationError):
    code = "malformed_token"


class CSRError(RegistrationError):
    code = "bad_csr"


class FingerprintMismatch(RegistrationError):
    code = "ca_fingerprint_mismatch"


class TemplateError(RegistrationError):
    code = "bad_template"
