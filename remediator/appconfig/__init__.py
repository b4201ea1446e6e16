"""App config: put the model name into the application's own configuration files.

Formats (``formats``, one registry): an env file (``OLLAMA_MODEL=...``), a JSON or YAML key
path (``llm.model``; a segment of digits indexes a list), or a plain text file that holds only
the name. Env and YAML edits touch only the value, so comments and layout survive
(``yaml_edit``); JSON is re-serialised with the file's indentation. Writes are atomic and
restorable (``files``).

A restart does not change a container's environment: the application must read a mounted
file. Mount its *directory*: a rename never reaches a single file bind-mounted on its own.
"""

from remediator.appconfig.files import AppConfigError, ConfigSnapshot, FileSnapshot
from remediator.appconfig.formats import FORMATS, AppConfigFormat, register_format
from remediator.appconfig.target import AppConfigTarget, snapshot, write_all

__all__ = [
    "FORMATS",
    "AppConfigError",
    "AppConfigFormat",
    "AppConfigTarget",
    "ConfigSnapshot",
    "FileSnapshot",
    "register_format",
    "snapshot",
    "write_all",
]
