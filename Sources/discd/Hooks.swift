import CLinux
import Cluster
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Event hooks (as Serf's event handlers): `--hook [NAME,NAME=]PROGRAM` runs PROGRAM for every
/// stream event (of those names), with the event's fields in its environment, a time limit
/// (`--hook-timeout`), at most `--hook-concurrency` at once and a bounded queue; what cannot be
/// queued is dropped and counted, and every failure (spawn error, non-zero exit, signal, time
/// limit) is logged. Hooks run on their own threads: the node's loop only enqueues.
final class HookRunner: @unchecked Sendable {
    struct Hook: Sendable, Equatable {
        var names: Set<String>
        var program: String

        /// `PROGRAM` or `NAME[,NAME...]=PROGRAM`.
        init(parsing spec: String) throws {
            if let eq = spec.firstIndex(of: "="), !spec[..<eq].contains("/") {
                names = Set(spec[..<eq].split(separator: ",").map { String($0).trimmed })
                program = String(spec[spec.index(after: eq)...])
                guard !names.isEmpty, !names.contains("") else { throw ConfigError("--hook \(spec): empty event name") }
            } else {
                names = []
                program = spec
            }
            guard program.hasPrefix("/") else { throw ConfigError("--hook \(spec): the program must be an absolute path") }
            guard access(program, X_OK) == 0 else { throw ConfigError("--hook \(spec): \(program) is not executable") }
        }

        func matches(_ e: StreamEvent) -> Bool { names.isEmpty || names.contains(e.item.name) }
    }

    static let queueLimit = 256
    let hooks: [Hook]
    let timeoutMillis: Int32
    let concurrency: Int
    let sink: LogSink
    private let lock = NIOLock()
    private var queued = 0
    private(set) var dropped = 0
    private(set) var ran = 0
    private(set) var failed = 0
    private let pool: NIOThreadPool

    init(hooks: [Hook], timeoutMillis: Int32, concurrency: Int, sink: LogSink) {
        self.hooks = hooks
        self.timeoutMillis = timeoutMillis
        self.concurrency = concurrency
        self.sink = sink
        self.pool = NIOThreadPool(numberOfThreads: max(1, concurrency))
        pool.start()
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    /// From the node's loop: queue the hooks this event matches (or drop and count).
    func offer(_ e: StreamEvent) {
        for h in hooks where h.matches(e) {
            let ok = lock.withLock { () -> Bool in
                guard queued < Self.queueLimit else {
                    dropped += 1
                    return false
                }
                queued += 1
                return true
            }
            guard ok else {
                sink.write(DaemonEvent.hookFailed(program: h.program, event: e.item.name, seq: e.seq, reason: "queue full: dropped"))
                continue
            }
            let env = Self.environment(e)
            pool.submit { _ in
                self.run(h, env: env, e: e)
                self.lock.withLock { self.queued -= 1 }
            }
        }
    }

    static func environment(_ e: StreamEvent) -> [String] {
        var env = [
            "DISCD_EVENT_SEQ=\(e.seq)", "DISCD_EVENT_EPOCH=\(e.epoch)", "DISCD_EVENT_TIME_MS=\(e.timeUnixMillis)",
            "DISCD_EVENT_SPACE=\(e.item.space.rawValue)", "DISCD_EVENT_NAME=\(e.item.name)",
            "DISCD_EVENT_SEVERITY=\(e.item.severity)", "DISCD_EVENT_NODE=\(e.item.node ?? "")",
            "DISCD_EVENT_NODE_ID=\(e.item.nodeID.map(String.init) ?? "")", "DISCD_EVENT_JSON=\(e.jsonLine)",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
        for (k, v) in e.item.payload {
            let key = k.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
            let value: String = if case .string(let s) = v { s } else { JSON.render(.scalar(v)) }
            env.append("DISCD_PAYLOAD_\(String(key))=\(value)")
        }
        return env
    }

    /// Runs one hook to completion or to its time limit (then SIGKILL).
    private func run(_ h: Hook, env: [String], e: StreamEvent) {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup(h.program), nil]
        var envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let rc = posix_spawn(&pid, h.program, &actions, nil, &argv, &envp)
        guard rc == 0 else {
            fail(h, e, "cannot run: \(String(cString: strerror(rc)))")
            return
        }
        let pfd = discd_pidfd_open(pid)
        var timedOut = false
        if pfd >= 0 {
            var p = pollfd(fd: pfd, events: Int16(POLLIN), revents: 0)
            var n: Int32
            repeat { n = poll(&p, 1, timeoutMillis) } while n < 0 && errno == EINTR
            if n == 0 {
                timedOut = true
                kill(pid, SIGKILL)
            }
            close(pfd)
        }
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        if timedOut {
            fail(h, e, "time limit of \(timeoutMillis) ms: killed")
        } else if st & 0x7F != 0 {
            fail(h, e, "killed by signal \(st & 0x7F)")
        } else if (st >> 8) & 0xFF != 0 {
            fail(h, e, "exit status \((st >> 8) & 0xFF)")
        } else {
            lock.withLock { ran += 1 }
            sink.write(DaemonEvent.hookRan(program: h.program, event: e.item.name, seq: e.seq))
        }
    }

    private func fail(_ h: Hook, _ e: StreamEvent, _ reason: String) {
        lock.withLock { failed += 1 }
        sink.write(DaemonEvent.hookFailed(program: h.program, event: e.item.name, seq: e.seq, reason: reason))
    }
}
