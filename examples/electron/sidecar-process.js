"use strict";
/**
 * Spawn the sidecar, read its first stdout line, and stop it: what a desktop app's main
 * process needs, in plain Node (>= 20), with no Electron, so that a test can run it.
 *
 *   const { startSidecar, defaultCommand } = require("./sidecar-process");
 *   const sidecar = await startSidecar(defaultCommand());  // rejects with SidecarStartError
 *   sidecar.ready;                                         // {event:"ready", url, ws, port, pid, token, ...}
 *   await sidecar.stop();                                  // {code, signal}
 *
 * The first stdout line is either `{"event":"ready",...}` or
 * `{"event":"error","error":"port-in-use","message":"..."}`; a sidecar that exits or stays
 * silent without one is an error too. stderr (the sidecar's log) is always read, line by
 * line, and handed to `onLog`: a pipe nobody reads fills up and blocks the writer.
 *
 * The sidecar is started with `--parent-pid <this process> --exit-on-stdin-eof`, so it
 * exits on its own if this process dies, however it dies. `stop()` closes its stdin (the
 * graceful stop on every OS) and sends SIGTERM (not on Windows, where `kill()` would be
 * TerminateProcess), waits for the exit with a deadline, then kills it.
 */

const { spawn } = require("node:child_process");
const path = require("node:path");
const readline = require("node:readline");

/** Lines of stderr kept for the message of a start-up failure. */
const STDERR_TAIL = 20;

/** A start-up failure. `error` is the sidecar's code (`port-in-use` …) or one of ours. */
class SidecarStartError extends Error {
  /**
   * @param {string} error `port-in-use`, `bad-option` … from the sidecar's error line, or
   *   `spawn-failed`, `exited`, `timeout`, `bad-ready-line`
   * @param {string} message one line for a person
   * @param {string[]} [stderr] the last lines the sidecar logged
   */
  constructor(error, message, stderr = []) {
    super(message);
    this.name = "SidecarStartError";
    this.error = error;
    this.stderr = stderr;
  }
}

/**
 * The Rust target triple of this machine, as the binary from `scripts/build-binary` and
 * Tauri's `externalBin` name it (`x86_64-unknown-linux-gnu`, `aarch64-apple-darwin` …).
 */
function targetTriple(platform = process.platform, arch = process.arch) {
  const cpu = { x64: "x86_64", arm64: "aarch64", ia32: "i686" }[arch];
  if (!cpu) throw new Error(`no sidecar binary for processor ${arch}`);
  if (platform === "darwin") return `${cpu}-apple-darwin`;
  if (platform === "win32") return `${cpu}-pc-windows-msvc`;
  if (platform === "linux") {
    const glibc = process.report?.getReport().header.glibcVersionRuntime;
    return `${cpu}-unknown-linux-${glibc ? "gnu" : "musl"}`;
  }
  throw new Error(`no sidecar binary for ${platform}`);
}

/** The binary's file name on this machine: `sidecar-<triple>` (`.exe` on Windows). */
function binaryName() {
  return `sidecar-${targetTriple()}${process.platform === "win32" ? ".exe" : ""}`;
}

/**
 * What to run in development: the binary named by `SIDECAR_BINARY` if set, else the
 * checkout's `scripts/serve` (which creates `.venv` on first use), or on Windows the venv's
 * Python with `-m sidecar` (`scripts/serve` is a bash script).
 */
function defaultCommand(repoRoot = path.resolve(__dirname, "..", "..")) {
  const binary = process.env.SIDECAR_BINARY;
  if (binary) return { command: binary, args: [] };
  if (process.platform === "win32") {
    const python = path.join(repoRoot, ".venv", "Scripts", "python.exe");
    return { command: python, args: ["-m", "sidecar"], cwd: repoRoot };
  }
  return { command: path.join(repoRoot, "scripts", "serve"), args: [] };
}

/** The environment for the sidecar: ours, without a token, so that it makes one. */
function sidecarEnv(env = process.env) {
  const copy = { ...env };
  delete copy.SIDECAR_TOKEN; // the sidecar then generates one and prints it in the ready line
  return copy;
}

/** A running sidecar: the child process, its ready line, and how to stop it. */
class Sidecar {
  /**
   * @param {import("node:child_process").ChildProcess} child
   * @param {Record<string, unknown>} ready the parsed ready line
   * @param {Promise<{code: number | null, signal: string | null}>} exited
   */
  constructor(child, ready, exited) {
    this.child = child;
    this.ready = ready;
    /** Resolves with `{code, signal}` once the process has exited (for whatever reason). */
    this.exited = exited;
  }

  /** What the renderer needs: `{url, ws, token}`. */
  get connection() {
    const { url, ws, token } = this.ready;
    return { url, ws, token };
  }

  /**
   * Stop the sidecar: close its stdin and (not on Windows) send SIGTERM; if it has not
   * exited after `timeoutMs`, kill it. Resolves with `{code, signal}`; 0 after a graceful stop.
   */
  async stop({ timeoutMs = 5000 } = {}) {
    const child = this.child;
    if (child.exitCode === null && child.signalCode === null) {
      child.stdin?.end();
      if (process.platform !== "win32") child.kill("SIGTERM");
      const done = await Promise.race([this.exited, delay(timeoutMs)]);
      if (done) return done;
      child.kill("SIGKILL");
    }
    return this.exited;
  }
}

/** Resolves with `undefined` after `ms` milliseconds (the timer does not keep Node alive). */
function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * Start the sidecar and wait for its first stdout line.
 *
 * @param {object} options
 * @param {string} options.command the executable (the binary, or `scripts/serve`)
 * @param {string[]} [options.args] arguments before ours (e.g. `["-m", "sidecar"]`)
 * @param {string[]} [options.extraArgs] arguments after ours (e.g. `["--allowed-origins", "null"]`)
 * @param {number} [options.port] 0 (the default) lets the OS pick a free port
 * @param {string} [options.cwd]
 * @param {NodeJS.ProcessEnv} [options.env] defaults to ours without `SIDECAR_TOKEN`
 * @param {number} [options.readyTimeoutMs] how long to wait for the first line (30 s)
 * @param {(line: string) => void} [options.onLog] each stderr line (default: our stderr)
 * @returns {Promise<Sidecar>} rejects with a {@link SidecarStartError}
 */
function startSidecar({
  command,
  args = [],
  extraArgs = [],
  port = 0,
  cwd,
  env = sidecarEnv(),
  readyTimeoutMs = 30000,
  onLog = (line) => process.stderr.write(`[sidecar] ${line}\n`),
}) {
  const ours = ["--port", String(port), "--parent-pid", String(process.pid), "--exit-on-stdin-eof"];
  const child = spawn(command, [...args, ...ours, ...extraArgs], {
    cwd,
    env,
    stdio: ["pipe", "pipe", "pipe"],
    windowsHide: true, // no console window for a console program started by a GUI app
  });
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", () => resolve({ code: null, signal: null }));
  });
  const tail = [];
  readline.createInterface({ input: child.stderr }).on("line", (line) => {
    tail.push(line);
    if (tail.length > STDERR_TAIL) tail.shift();
    onLog(line);
  });
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (error, sidecar) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        if (child.exitCode === null) child.kill("SIGKILL");
        reject(error);
      } else resolve(sidecar);
    };
    const fail = (code, message) => settle(new SidecarStartError(code, message, [...tail]));
    const timer = setTimeout(
      () => fail("timeout", `the sidecar printed no ready line within ${readyTimeoutMs} ms`),
      readyTimeoutMs,
    );
    child.once("error", (err) => fail("spawn-failed", `cannot start ${command}: ${err.message}`));
    // 'close' comes after the exit and after every stdout line has been read
    child.once("close", (code, signal) => {
      const how = signal ? `signal ${signal}` : `code ${code}`;
      const last = tail.length ? `: ${tail[tail.length - 1]}` : "";
      fail("exited", `the sidecar exited (${how}) before its ready line${last}`);
    });
    let first = true;
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (!first) return onLog(line); // nothing more is expected on stdout; keep draining
      first = false;
      let parsed;
      try {
        parsed = JSON.parse(line);
      } catch {
        return fail("bad-ready-line", `the sidecar's first line is not JSON: ${line.slice(0, 200)}`);
      }
      if (parsed.event === "ready") return settle(null, new Sidecar(child, parsed, exited));
      if (parsed.event === "error") {
        return fail(String(parsed.error), String(parsed.message ?? parsed.error));
      }
      fail("bad-ready-line", `unexpected first line: ${line.slice(0, 200)}`);
    });
  });
}

module.exports = {
  Sidecar,
  SidecarStartError,
  binaryName,
  defaultCommand,
  sidecarEnv,
  startSidecar,
  targetTriple,
};
