"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake by the user (config, paths, data).

    The CLI prints it as one line on stderr and exits with code 2.
    """
