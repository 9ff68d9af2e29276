"""dino-server as a child process of a Python test: started on free ports of 127.0.0.1, the
lines it prints before "listening on" kept (they announce the UM-Bridge, REST and metrics
URLs), stopped with SIGTERM and required to exit cleanly."""
import os
import re
import signal
import subprocess


class ServerProcess:
    def __init__(self, bin_dir, repository, *flags):
        """Starts ``bin_dir``/dino-server on ``repository`` with ``--port=0
        --host=127.0.0.1``, ``--metrics_port=-1`` unless ``flags`` set it, and ``flags``;
        returns once it listens. RuntimeError if it exits first."""
        if not any(f.startswith("--metrics_port") for f in flags):
            flags = flags + ("--metrics_port=-1",)
        self.process = subprocess.Popen(
            [os.path.join(bin_dir, "dino-server"), "--model_repository=" + repository,
             "--port=0", "--host=127.0.0.1"] + list(flags), stdout=subprocess.PIPE, text=True)
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.search(r"listening on \S*:(\d+)", line)
            if match:
                self.target = "127.0.0.1:" + match.group(1)
                return
        raise RuntimeError("dino-server exited before listening: " + "".join(self.lines))

    def announced(self, pattern):
        """Group 1 of the first line printed before "listening on" that matches ``pattern``
        (e.g. r"UM-Bridge on (http://\\S+)"); AssertionError when none does."""
        for line in self.lines:
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        raise AssertionError("dino-server did not announce %r: %s" % (pattern, "".join(self.lines)))

    def stop(self):
        """SIGTERM; the server must exit with status 0 within a minute."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0
