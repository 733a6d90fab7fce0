# protocol first: it refuses a compiled build older than its source (protocol/build.py).
import protocol  # noqa: F401
