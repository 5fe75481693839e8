import Glibc

/// Daemon mode without `fork` in a threaded process: the foreground `discd` checks the
/// configuration, then starts a fresh copy of itself (`/proc/self/exe`, same arguments) in a new
/// session with stdio on /dev/null and a pipe on fd 3 (`DISCD_READY_FD=3`). The copy runs the
/// daemon and writes `READY` (or `ERR <reason>`) on the pipe; the foreground process returns 0 on
/// READY, or prints the reason and returns 1. No thread exists when the copy starts: it is a new
/// program, not a fork.
enum Detach {
    static let envName = "DISCD_READY_FD"

    /// The readiness pipe, when this process is the detached daemon.
    static func readyFD() -> Int32? {
        guard let v = getenv(envName), let fd = Int32(String(cString: v)), fd >= 3 else { return nil }
        return fd
    }

    static func report(_ fd: Int32, _ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// Starts the daemon copy and waits (at most 60 s) for its word; returns the exit code.
    static func spawnAndWait() throws -> Int32 {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ConfigError("cannot detach: pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGUSR1, SIGHUP, SIGPIPE] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        // POSIX_SPAWN_SETSID (0x80): the daemon leads a new session, detached from the terminal.
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | 0x80))

        let exe = "/proc/self/exe"
        let argv = CommandLine.arguments.map { strdup($0) } + [nil]
        var env: [UnsafeMutablePointer<CChar>?] = []
        var p = environ
        while let e = p.pointee {
            if !String(cString: e).hasPrefix(envName + "=") { env.append(strdup(e)) }
            p += 1
        }
        env.append(strdup("\(envName)=3"))
        env.append(nil)
        defer {
            argv.forEach { free($0) }
            env.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, argv, env)
        close(fds[1])
        guard rc == 0 else { throw ConfigError("cannot detach: posix_spawn: \(String(cString: strerror(rc)))") }

        var text: [UInt8] = []
        var pfd = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
        let deadline = 60_000
        var waited = 0
        var buf = [UInt8](repeating: 0, count: 512)
        while waited < deadline {
            let r = poll(&pfd, 1, 200)
            waited += 200
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n <= 0 { break }
            text += buf[0..<n]
            if text.contains(10) { break }
        }
        close(fds[0])
        let line = String(decoding: text, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        if line == "READY" { return 0 }
        if line.hasPrefix("ERR ") {
            writeStderr("discd: \(line.dropFirst(4))\n")
        } else {
            var status: Int32 = 0
            let w = waitpid(pid, &status, WNOHANG)
            writeStderr(
                "discd: the daemon (pid \(pid)) " + (w == pid ? "exited before it was ready" : "did not report ready within 60 s")
                    + "\n")
        }
        return 1
    }
}
