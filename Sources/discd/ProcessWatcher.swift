import CLinux
import Cluster
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Opted-in processes (docs/EVENTS.md, "Watching processes"): a pidfd each, all polled by one
/// thread that sleeps in poll(2) — it never spins — and hands each exit to the node's loop at once.
///
/// The exit status is read from the exited process's `/proc/PID/stat` (its `exit_code` field) while
/// it is a zombie: always for `discd watch -- CMD`, which keeps its child unreaped until discd has
/// it; for `--pid`, only if discd reads it before the process's parent reaps it (else -1, unknown).
final class ProcessWatcher: @unchecked Sendable {
    static let maxWatched = 4096

    struct Watch: Sendable {
        let pid: Int32
        let tag: UInt16
        let startTime: UInt64
        let name: String
        let pidfd: Int32
        /// Told when the exit is known (the `discd watch -- CMD` client waits for it to reap).
        let notify: (@Sendable (Int32) -> Void)?
    }

    enum Refusal: Error, Equatable, CustomStringConvertible {
        case noSuchProcess(Int32)
        case notYours(pid: Int32, owner: UInt32)
        case alreadyWatched(Int32)
        case tooMany
        case system(String)

        var description: String {
            switch self {
            case .noSuchProcess(let p): "no such process \(p)"
            case .notYours(let p, let o): "process \(p) belongs to uid \(o): only root may watch another user's process"
            case .alreadyWatched(let p): "process \(p) is already watched"
            case .tooMany: "already watching \(ProcessWatcher.maxWatched) processes"
            case .system(let s): s
            }
        }
    }

    let loop: EventLoop
    private let lock = NIOLock()
    private var watches: [Int32: Watch] = [:]
    private let wakeup = WakePipe()
    private let stopping = NIOLockedValueBox(false)
    private var pool: NIOThreadPool?
    /// An exit, on the loop: the watch and the wait status (-1 unknown).
    var exited: ((Watch, Int32) -> Void)?

    init(loop: EventLoop) {
        self.loop = loop
    }

    var count: Int { lock.withLock { watches.count } }

    func start() {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        self.pool = pool
        pool.submit { _ in self.run() }
    }

    func stop() async {
        stopping.withLockedValue { $0 = true }
        wakeup.wake()
        try? await pool?.shutdownGracefully()
        lock.withLock {
            for w in watches.values { close(w.pidfd) }
            watches.removeAll()
        }
        wakeup.close()
    }

    /// Starts watching `pid` for a caller of uid `callerUID` (root may watch anyone).
    func watch(pid: Int32, tag: UInt16, callerUID: UInt32, notify: (@Sendable (Int32) -> Void)?) -> Result<Watch, Refusal> {
        guard pid > 0 else { return .failure(.noSuchProcess(pid)) }
        var st = stat()
        // A zombie (exited, not yet reaped: a quick child of `discd watch -- CMD`) is watched too: its
        // pidfd is readable at once and its exit is reported with its status.
        guard stat("/proc/\(pid)", &st) == 0, let info = Self.procStat(pid) else {
            return .failure(.noSuchProcess(pid))
        }
        if callerUID != 0 && st.st_uid != callerUID { return .failure(.notYours(pid: pid, owner: st.st_uid)) }
        return lock.withLock {
            if watches[pid] != nil { return .failure(.alreadyWatched(pid)) }
            if watches.count >= Self.maxWatched { return .failure(.tooMany) }
            let fd = discd_pidfd_open(pid)
            guard fd >= 0 else {
                return .failure(errno == ESRCH ? .noSuchProcess(pid) : .system("pidfd_open(\(pid)): \(errnoText())"))
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let w = Watch(pid: pid, tag: tag, startTime: info.startTime, name: info.name, pidfd: fd, notify: notify)
            watches[pid] = w
            wakeup.wake()
            return .success(w)
        }
    }

    private func run() {
        while !stopping.withLockedValue({ $0 }) {
            let current = lock.withLock { Array(watches.values) }
            var fds = [pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
            fds += current.map { pollfd(fd: $0.pidfd, events: Int16(POLLIN), revents: 0) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { continue }
            if fds[0].revents != 0 { wakeup.drain() }
            for (i, w) in current.enumerated() where fds[i + 1].revents != 0 {
                let status = Self.exitStatus(w)
                lock.withLock {
                    watches[w.pid] = nil
                    close(w.pidfd)
                }
                loop.execute {
                    self.exited?(w, status)
                    w.notify?(status)
                }
            }
        }
    }

    /// The wait status of an exited process, if it is still a zombie of the same life (start time).
    static func exitStatus(_ w: Watch) -> Int32 {
        guard let s = procStat(w.pid), s.startTime == w.startTime, s.state == "Z", let code = s.exitCode else { return -1 }
        return code
    }

    struct ProcStat: Equatable {
        var name: String
        var state: Character
        var startTime: UInt64
        var exitCode: Int32?
    }

    static func procStat(_ pid: Int32) -> ProcStat? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 2048)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return nil }
        return parseStat(String(decoding: buf[0..<n], as: UTF8.self))
    }

    /// `/proc/PID/stat`: `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so the
    /// fields are counted from the last `)`. Field 22 is the start time, field 52 the exit code.
    static func parseStat(_ text: String) -> ProcStat? {
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")"), open < close else { return nil }
        let name = String(text[text.index(after: open)..<close])
        let rest = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        guard rest.count >= 20, let state = rest[0].first, let start = UInt64(rest[19]) else { return nil }
        let exit = rest.count >= 50 ? Int32(rest[49].split(separator: "\n").first ?? "") : nil
        return ProcStat(name: name, state: state, startTime: start, exitCode: exit)
    }
}

/// Wakes a thread sleeping in poll(2): a non-blocking, close-on-exec pipe whose read end it polls.
struct WakePipe: Sendable {
    let fd: Int32
    private let writeFD: Int32

    init() {
        var p: [Int32] = [-1, -1]
        if pipe(&p) == 0 {
            for f in p {
                _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK)
                _ = fcntl(f, F_SETFD, FD_CLOEXEC)
            }
        }
        fd = p[0]
        writeFD = p[1]
    }

    func wake() {
        var one: UInt8 = 1
        _ = write(writeFD, &one, 1)
    }

    func drain() {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(fd, &buf, 64) > 0 {}
    }

    func close() {
        Glibc.close(fd)
        Glibc.close(writeFD)
    }
}
