"""User-facing errors.

Every mistake a user can make (bad option, missing model, broken file, empty prompt) raises
`QuickdraftError` with one line that says what is wrong and how to fix it. The CLI prints that line
to stderr and exits with code 2; nothing else in the package prints tracebacks for user input.
"""


class QuickdraftError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2
