"""``mvm.Sandbox``: one VM as an agent uses it — create, exec, files, fork, close.

Every method calls the runtime the CLI calls: ``create`` is
:func:`mvm.runtime.vm.up` (restored from the template's snapshot when it has
one), ``exec`` and ``files`` go through :mod:`mvm.runtime.guest` (the VM's
agent sidecar), ``fork`` is :func:`mvm.runtime.fork.fork`, ``pause`` /
``resume`` / ``close`` are :mod:`mvm.runtime.vm`'s.  Every call has a
timeout (``DeadlineError`` or ``AgentError`` past it); every error is an
:class:`~mvm.errors.MvmError`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mvm.errors import AgentError, ConfigError, DeadlineError, MvmError, NotFoundError
from mvm.sdk.deadline import bounded
from mvm.sdk.options import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_CREATE_TIMEOUT,
    CreateOptions,
    check_timeout,
    create_options,
    fresh_name,
)
from mvm.sdk.result import Chunk, CommandResult

if TYPE_CHECKING:
    from mvm.agent.client import AgentClient
    from mvm.agent.models import Entry

Command = str | Sequence[str]
OutputCallback = Callable[[bytes], None]


def argv_of(cmd: Command) -> list[str]:
    """A string runs under ``/bin/sh -c`` (pipes, redirections); a list is argv as is."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ConfigError("exec needs a command")
        return ["/bin/sh", "-c", cmd]
    argv = list(cmd)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError("exec needs a command: a string or a non-empty list of strings")
    return argv


def _start(opts: CreateOptions) -> str:
    """Start the VM as ``mvmctl up`` does; return its name."""
    from mvm.config import load_project
    from mvm.runtime.vm import up

    if opts.kind == "template":
        vm = up(f"template:{opts.source}", opts.run, cold=opts.cold)
    elif opts.kind == "project":
        vm = up(load_project(opts.source), opts.run)
    else:
        from mvm.config.loader import image_project

        vm = up(image_project(opts.source), opts.run, source=opts.source)
    return vm.name


def _down_quietly(name: str) -> None:
    from mvm.runtime.vm import down

    with contextlib.suppress(NotFoundError):
        down(name)


class Files:
    """A sandbox's files, read and written as its entrypoint uid (absolute paths)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def read(self, path: str, *, max_size: int | None = None,
             timeout: float | None = None) -> bytes:  # fmt: skip
        """``path``'s bytes; more than ``max_size`` (default 2 GiB) is an error."""
        from mvm.agent.client import MAX_READ

        t = self._sb._timeout(timeout)
        with self._sb._client("cp", t) as c:
            return c.read_file(path, max_size=max_size or MAX_READ, timeout=t)[0]

    def read_text(self, path: str, *, timeout: float | None = None) -> str:
        return self.read(path, timeout=timeout).decode("utf-8", "replace")

    def write(self, path: str, data: bytes | str, *, mode: int = 0o644,
              timeout: float | None = None) -> int:  # fmt: skip
        """Write ``path`` atomically (the guest renames a temp file over it); its size."""
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ConfigError(f"invalid file mode {mode!r}")
        raw = data.encode() if isinstance(data, str) else data
        if not isinstance(raw, bytes):
            raise ConfigError("files.write takes bytes or str")
        t = self._sb._timeout(timeout)
        with self._sb._client("cp", t) as c:
            return c.write_file(path, raw, mode, timeout=t)

    def list(self, path: str = "/", *, timeout: float | None = None) -> list[Entry]:
        """``path``'s entries (name, type, mode, size)."""
        t = self._sb._timeout(timeout)
        with self._sb._client("cp", t) as c:
            return c.list_dir(path, timeout=t)

    def remove(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        """Remove ``path`` (a directory only with ``recursive``); a missing path is not an
        error.  The agent has no unlink verb: this runs ``rm`` in the guest."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"files.remove needs an absolute path, not {path!r}")
        r = self._sb.exec(["rm", "-rf" if recursive else "-f", "--", path], timeout=timeout)
        if r.exit_code != 0:
            why = r.stderr.strip() or f"rm exited {r.exit_code}"
            raise AgentError(f"cannot remove {path}: {why}")


class CommandStream:
    """A running command's output as :class:`Chunk` s; ``result`` once it ended.

    Iterating reads until the command exits; leaving early (``close()``, or
    the ``with`` block) kills it.
    """

    def __init__(self, client: AgentClient, stream: int, argv0: str, deadline: float,
                 timeout: float) -> None:  # fmt: skip
        self._client, self._stream, self._argv0 = client, stream, argv0
        self._deadline, self._timeout = deadline, timeout
        self.result: CommandResult | None = None

    def __iter__(self) -> Iterator[Chunk]:
        from mvm.agent.codec import JSON, STDERR, STDOUT
        from mvm.agent.protocol import ExecResult, error_text

        out, err = bytearray(), bytearray()
        try:
            while self.result is None:
                try:
                    f = self._client.next_frame(self._stream, self._deadline)
                except AgentError:
                    if time.monotonic() >= self._deadline:
                        self._client.kill(self._stream)
                        raise DeadlineError(
                            f"{self._argv0}: timed out after {self._timeout:g}s"
                        ) from None
                    raise
                if f.type == STDOUT:
                    out += f.payload
                    yield Chunk("stdout", f.payload)
                elif f.type == STDERR:
                    err += f.payload
                    yield Chunk("stderr", f.payload)
                elif f.type == JSON:
                    msg = f.json()
                    if msg["op"] == "exit":
                        r = ExecResult.parse(msg)
                        self.result = CommandResult(r.code, bytes(out), bytes(err), r.signal)
                    elif msg["op"] == "error":
                        raise AgentError(error_text(msg))
        finally:
            self.close()

    def close(self) -> None:
        if self.result is None:
            self._client.kill(self._stream)
        self._client.close()

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox:
    """A VM to run code in.  ``Sandbox.create(template="py")`` starts one (restored
    from the template's snapshot when it has one); use it as a context manager
    so it is removed however the block ends."""

    def __init__(self, name: str, *, timeout: float | None = None) -> None:
        """A handle on VM ``name`` (use :meth:`create` or :meth:`connect`)."""
        self.name = name
        self.default_timeout = check_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        self.files = Files(self)
        self._closed = False

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    # -- life --

    @classmethod
    def create(
        cls, template: str | None = None, *, project: str | Path | None = None,
        image: str | None = None, name: str | None = None,
        secrets: Sequence[str] | None = None, network: str | None = None,
        allow: Sequence[str] | None = None, ports: Sequence[str] | None = None,
        credentials: Mapping[str, str | bytes] | None = None, cpus: int | None = None,
        mem: int | None = None, cold: bool = False, timeout: float | None = None,
        call_timeout: float | None = None,
    ) -> Sandbox:  # fmt: skip
        """Start a sandbox from a template, a project directory or an OCI image.

        ``secrets`` are egress bindings (``KEY=VALUE:HOST[,HOST][:HEADER]``, as
        ``mvmctl up --secret``: the guest sees a placeholder, the proxy sends the
        value to HOST only); ``network`` a preset (none, dev, agent, open) and
        ``allow`` extra ``HOST[:PORT]`` rules; ``credentials`` NAME → value
        (delivered to /run/credentials/@system/NAME).  ``timeout`` bounds the
        start (default 600 s); ``call_timeout`` is the default of later calls.
        The name defaults to ``sb-`` and 8 random hex digits.
        """
        opts = create_options(template, project=project, image=image, name=name,
                              secrets=secrets, network=network, allow=allow, ports=ports,
                              credentials=credentials, cpus=cpus, mem=mem, cold=cold)  # fmt: skip
        t = check_timeout(timeout, DEFAULT_CREATE_TIMEOUT)
        vm_name = bounded(lambda: _start(opts), t, f"creating sandbox {opts.run.name}",
                          late=_down_quietly)  # fmt: skip
        return cls(vm_name, timeout=call_timeout)

    @classmethod
    def connect(cls, name: str, *, timeout: float | None = None) -> Sandbox:
        """A handle on an existing, running VM (any VM ``mvmctl ls`` lists)."""
        from mvm.runtime import lifecycle
        from mvm.runtime.vm import get

        lifecycle.require(get(name).record, "exec")
        return cls(name, timeout=timeout)

    def close(self) -> None:
        """Stop and remove the VM (``mvmctl down``); closing twice is fine."""
        if self._closed:
            return
        _down_quietly(self.name)
        self._closed = True

    kill = close

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def info(self) -> dict[str, object]:
        """What ``mvmctl status --json`` shows."""
        from mvm.runtime.vm import get

        return get(self.name).info()

    def pause(self, *, timeout: float | None = None) -> None:
        """Stop the VM's vCPUs (memory kept)."""
        from mvm.runtime.vm import pause

        bounded(lambda: pause(self.name), self._timeout(timeout), f"pausing {self.name}")

    def resume(self, *, timeout: float | None = None) -> None:
        from mvm.runtime.vm import resume

        bounded(lambda: resume(self.name), self._timeout(timeout), f"resuming {self.name}")

    def fork(self, name: str | None = None, *, timeout: float | None = None) -> Sandbox:
        """A second sandbox from this one's current state (memory, files, processes);
        both keep running.  Its name defaults to a fresh ``sb-…``."""
        from mvm import paths
        from mvm.runtime.fork import fork

        new = paths.validate_name(name, "VM name") if name is not None else fresh_name()

        def run() -> str:
            started = fork(self.name, new)
            started.machine.close()
            return started.record.name

        t = check_timeout(timeout, max(self.default_timeout, DEFAULT_CALL_TIMEOUT))
        forked = bounded(run, t, f"forking {self.name}", late=_down_quietly)
        return type(self)(forked, timeout=self.default_timeout)

    def logs(self, lines: int = 200) -> str:
        """The last ``lines`` lines of the VM's console (0: all of it)."""
        from mvm.runtime.vm import log_path, tail_lines

        return tail_lines(log_path(self.name), lines).decode("utf-8", "replace")

    # -- commands --

    def _timeout(self, timeout: float | None) -> float:
        return check_timeout(timeout, self.default_timeout)

    def _client(self, verb: str, timeout: float) -> AgentClient:
        from mvm.runtime.guest import connect

        return connect(self.name, verb=verb, timeout=timeout)

    def exec(self, cmd: Command, *, env: Mapping[str, str] | None = None,
             cwd: str | None = None, input: bytes | str | None = None,
             timeout: float | None = None, on_stdout: OutputCallback | None = None,
             on_stderr: OutputCallback | None = None) -> CommandResult:  # fmt: skip
        """Run ``cmd`` to completion as the entrypoint uid: a string through
        ``/bin/sh -c``, a list as argv.  A non-zero exit is a result, not an error;
        ``timeout`` (default the sandbox's) kills the command and raises.  With
        ``on_stdout``/``on_stderr`` the output is also handed over as it comes."""
        if on_stdout is not None or on_stderr is not None:
            with self.exec_stream(cmd, env=env, cwd=cwd, timeout=timeout) as s:
                for chunk in s:
                    cb = on_stdout if chunk.stream == "stdout" else on_stderr
                    if cb is not None:
                        cb(chunk.data)
                assert s.result is not None
                return s.result
        argv = argv_of(cmd)
        envd = _env(env)
        data = input.encode() if isinstance(input, str) else input
        t = self._timeout(timeout)
        with self._client("exec", t) as c:
            try:
                r = c.exec(argv, env=envd, cwd=cwd, input=data, timeout=t)
            except AgentError as exc:
                if "timed out" in exc.message:
                    raise DeadlineError(exc.message) from None
                raise
        return CommandResult(r.code, r.stdout, r.stderr, r.signal)

    def exec_stream(self, cmd: Command, *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, timeout: float | None = None
                    ) -> CommandStream:  # fmt: skip
        """Start ``cmd``; iterate the result for its output chunks as they come."""
        argv = argv_of(cmd)
        t = self._timeout(timeout)
        client = self._client("exec", t)
        try:
            stream = client.start_exec(argv, env=_env(env), cwd=cwd, timeout=t)
        except BaseException:
            client.close()
            raise
        return CommandStream(client, stream, argv[0], time.monotonic() + t, t)


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in env.items()
    ):
        raise ConfigError("env must map names (no '=') to strings")
    return dict(env)


__all__ = ["CommandStream", "Files", "MvmError", "Sandbox", "argv_of"]
