"""A wrong clock for one real agent process, which the agent may set, without the real
host clock ever changing.

libfaketime (Debian's ``libfaketime``) fakes what the process reads; Debian builds it
without ``FAKE_SETTIME``, so it does not intercept ``clock_settime``. A shim of ten lines
(compiled here, preloaded first) does: it turns ``clock_settime(CLOCK_REALTIME, t)`` into
an offset written to ``FAKETIME_TIMESTAMP_FILE``, which libfaketime re-reads on every call
(``FAKETIME_NO_CACHE``). The process also runs without ``CAP_SYS_TIME`` (``setpriv``), so
even a call that got past the shim could not set the host's clock.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SHIM_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* clock_settime as an offset in libfaketime's timestamp file; never the real clock. */
int clock_settime(clockid_t clk, const struct timespec *tp) {
    const char *path = getenv("FAKETIME_TIMESTAMP_FILE");
    struct timespec real;
    char tmp[4096];
    FILE *f;
    if (clk != CLOCK_REALTIME || path == NULL) { errno = EPERM; return -1; }
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &real); /* the real time, not the faked */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL) return -1;
    fprintf(f, "%+ld\n", (long)(tp->tv_sec - real.tv_sec));
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}
"""
#: Run the agent without the capability to set the clock.
NO_SYS_TIME = ("setpriv", "--bounding-set=-sys_time", "--")


def build_shim(directory: Path) -> Path:
    source, shim = directory / "settime_shim.c", directory / "settime_shim.so"
    source.write_text(SHIM_C)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source)],
        check=True,
        capture_output=True,
    )
    return shim


@dataclass(frozen=True)
class FakeClock:
    """The clock file one agent lives by: ``@YYYY-MM-DD HH:MM:SS`` to start, an offset in
    seconds (``+N``) once the agent has set its clock."""

    rc: Path
    shim: Path

    def start_at(self, when: str) -> None:
        self.rc.write_text(f"@{when}\n")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": f"{self.shim} {LIBFAKETIME}",
            "FAKETIME_TIMESTAMP_FILE": str(self.rc),
            "FAKETIME_NO_CACHE": "1",
        }

    def offset(self) -> int | None:
        """The offset the agent set (None while it has set none)."""
        text = self.rc.read_text().strip()
        return None if text.startswith("@") else int(text)
