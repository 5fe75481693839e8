import CLinux
import Cluster
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NodeMap
import ServiceLifecycle

/// The link to discd's kernel modules (kernel/README.md), when they are loaded:
/// - reads the exits of processes opted in through `/dev/heartbeat` (the `heartbeat` module) and hands
///   each to the node, which multicasts it over IP like a watched process's exit (source `kernel`),
///   so the notice leaves the node even where `fdmod` has no RDMA device;
/// - writes this node's ID and the node map into `/proc/fdmod/map` (the `fdmod` module) whenever the
///   map changes or the module (re)appears, so that fdmod's immediate names this node.
///
/// One thread sleeps in poll(2) on the device and a wake pipe (at most 1 s, to notice a module
/// loaded or unloaded); it never spins. The daemon holding `/dev/heartbeat` open keeps the module
/// loaded: `discd kernel detach` (or the `kernel` control request) lets go of it until `attach`, so
/// that `kernel/unload.sh` can unload the modules under a running daemon.
final class KernelLink: Service, @unchecked Sendable {
    enum State: String, Sendable {
        /// `--no-kernel`.
        case off
        /// No `/dev/heartbeat` (the module is not loaded): looked for again every second.
        case absent
        case attached
        /// Let go of on request (`discd kernel detach`).
        case detached
        /// The device refused us (not root, or another error): looked for again every second.
        case refused
    }

    struct Exit: Sendable, Equatable {
        var pid: UInt32
        var tag: UInt16
        var status: Int32
        /// Start time in clock ticks since boot (as /proc/PID/stat field 22), from the record's ns.
        var startTicks: UInt64
        /// Records the module dropped before this one (its queue was full).
        var lost: UInt32
    }

    struct Counters: Sendable {
        var exits = 0
        var lost = 0
        var readErrors = 0
        var mapWrites = 0
        var mapWriteErrors = 0
        var attaches = 0
    }

    static let heartbeatPath = HEARTBEAT_DEVICE
    static let fdmodMapPath = "/proc/fdmod/map"
    static let recordSize = Int(HEARTBEAT_EXIT_RECORD_SIZE)

    let loop: EventLoop
    let sink: LogSink
    let heartbeatPath: String
    let fdmodMapPath: String
    /// An exit of an opted-in process, on the loop.
    var exited: ((Exit, String) -> Void)?

    private let lock = NIOLock()
    private var fd: Int32 = -1
    private var state: State
    private var reason = ""
    private var wantDetached = false
    private var counters = Counters()
    /// The newest map to write into fdmod, and the last one handed over (written again whenever
    /// fdmod's map does not start with our `self` line: the module was loaded or reloaded).
    private var pendingMap: (map: NodeMap, me: IPAddress)?
    private var latestMap: (map: NodeMap, me: IPAddress)?
    /// A write failed for this map generation: not again until the map changes.
    private var failedGeneration: UInt64?
    private var lastWrittenGeneration: UInt64?
    private var detachWaiters: [EventLoopPromise<State>] = []
    private let wakeup = WakePipe()
    private let stopping = NIOLockedValueBox(false)
    private var pool: NIOThreadPool?
    private let ticksPerSecond = UInt64(max(1, sysconf(Int32(_SC_CLK_TCK))))

    init(
        loop: EventLoop, sink: LogSink, enabled: Bool, heartbeatPath: String = KernelLink.heartbeatPath,
        fdmodMapPath: String = KernelLink.fdmodMapPath
    ) {
        self.loop = loop
        self.sink = sink
        self.heartbeatPath = heartbeatPath
        self.fdmodMapPath = fdmodMapPath
        self.state = enabled ? .absent : .off
    }

    var enabled: Bool { lock.withLock { state != .off } }

    func run() async throws {
        guard enabled else {
            // A service that ends early stops the group: off, it just waits for the shutdown.
            try? await gracefulShutdown()
            return
        }
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        self.pool = pool
        pool.submit { _ in self.thread() }
        try? await gracefulShutdown()
        stopping.withLockedValue { $0 = true }
        wakeup.wake()
        try? await pool.shutdownGracefully()
        lock.withLock {
            if fd >= 0 { close(fd) }
            fd = -1
        }
        wakeup.close()
    }

    /// The map changed (on the loop): written into fdmod by the link's thread.
    func mapChanged(_ map: NodeMap, me: IPAddress) {
        guard enabled else { return }
        lock.withLock { pendingMap = (map, me) }
        wakeup.wake()
    }

    /// Let go of the device (`attach` false) or take it again; the future completes once done.
    func setAttached(_ attach: Bool) -> EventLoopFuture<State> {
        let p = loop.makePromise(of: State.self)
        let now: State? = lock.withLock {
            guard state != .off else { return .off }
            wantDetached = !attach
            if attach {
                if state == .detached { state = .absent }
                return nil
            }
            if fd < 0 {
                state = .detached
                return .detached
            }
            detachWaiters.append(p)
            return nil
        }
        wakeup.wake()
        if let now { p.succeed(now) } else if attach { p.succeed(lock.withLock { state }) }
        return p.futureResult
    }

    /// The status file's `kernel` object (docs/EVENTS.md).
    func fields(into f: inout EventFields) {
        let (s, r, c) = lock.withLock { (state, reason, counters) }
        Self.fields(state: s, reason: r, counters: c, into: &f)
    }

    /// The `kernel` object of a daemon without the link (`--no-kernel`).
    static func offFields(into f: inout EventFields) {
        fields(state: .off, reason: "--no-kernel", counters: Counters(), into: &f)
    }

    private static func fields(state s: State, reason r: String, counters c: Counters, into f: inout EventFields) {
        f.add("state", s.rawValue)
        f.add("reason", r)
        f.add("exits", c.exits)
        f.add("lost", c.lost)
        f.add("read_errors", c.readErrors)
        f.add("map_writes", c.mapWrites)
        f.add("map_write_errors", c.mapWriteErrors)
        f.add("attaches", c.attaches)
    }

    // MARK: The thread

    private func thread() {
        while !stopping.withLockedValue({ $0 }) {
            let (current, detach) = lock.withLock { (fd, wantDetached) }
            if detach, current >= 0 {
                letGo(reason: "detached on request", detached: true)
                continue
            }
            if current < 0 && !detach { attach() }
            writeMapIfDue()
            var fds = [pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
            let dev = lock.withLock { fd }
            if dev >= 0 { fds.append(pollfd(fd: dev, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), 1000)
            if n <= 0 { continue }
            if fds[0].revents != 0 { wakeup.drain() }
            if fds.count > 1, fds[1].revents != 0 { readRecords(fds[1].revents) }
        }
    }

    private func attach() {
        let f = open(heartbeatPath, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if f < 0 {
            let e = errno
            let (was, why): (State, String) = lock.withLock {
                let was = state
                state = e == ENOENT || e == ENXIO || e == ENODEV ? .absent : .refused
                reason = e == ENOENT ? "no \(heartbeatPath) (module not loaded)" : "\(heartbeatPath): \(errnoText(e))"
                return (was, reason)
            }
            if was == .attached { sink.write(DaemonEvent.kernelDetached(reason: why)) }
            return
        }
        lock.withLock {
            fd = f
            state = .attached
            reason = ""
            counters.attaches += 1
        }
        sink.write(DaemonEvent.kernelAttached(device: heartbeatPath))
    }

    private func letGo(reason why: String, detached: Bool) {
        let waiters: [EventLoopPromise<State>] = lock.withLock {
            if fd >= 0 { close(fd) }
            fd = -1
            state = detached ? .detached : .absent
            reason = why
            defer { detachWaiters.removeAll() }
            return detachWaiters
        }
        sink.write(DaemonEvent.kernelDetached(reason: why))
        for w in waiters { w.succeed(detached ? .detached : .absent) }
    }

    private func readRecords(_ revents: Int16) {
        let dev = lock.withLock { fd }
        guard dev >= 0 else { return }
        var buf = [UInt8](repeating: 0, count: Self.recordSize * 64)
        for _ in 0..<64 {
            let n = buf.withUnsafeMutableBytes { read(dev, $0.baseAddress, $0.count) }
            if n < 0 {
                let e = errno
                if e == EAGAIN || e == EINTR { return }
                lock.withLock { counters.readErrors += 1 }
                letGo(reason: "read \(heartbeatPath): \(errnoText(e))", detached: false)
                return
            }
            if n == 0 {
                if revents & Int16(POLLHUP | POLLERR) != 0 { letGo(reason: "\(heartbeatPath) hung up", detached: false) }
                return
            }
            for exit in Self.parse(buf[0..<n], ticksPerSecond: ticksPerSecond) {
                lock.withLock {
                    counters.exits += 1
                    counters.lost += Int(exit.lost)
                }
                let name = ProcessWatcher.procStat(Int32(bitPattern: exit.pid)).flatMap { $0.startTime == exit.startTicks ? $0.name : nil } ?? ""
                loop.execute { self.exited?(exit, name) }
            }
            if n < buf.count { return }
        }
    }

    /// Whole `struct heartbeat_exit` records (a partial one at the end is ignored: the module returns
    /// whole records only).
    static func parse(_ bytes: ArraySlice<UInt8>, ticksPerSecond: UInt64) -> [Exit] {
        var out: [Exit] = []
        var i = bytes.startIndex
        let nsPerTick = 1_000_000_000 / max(1, ticksPerSecond)
        while bytes.endIndex - i >= recordSize {
            var r = heartbeat_exit()
            withUnsafeMutableBytes(of: &r) { raw in
                for k in 0..<recordSize { raw[k] = bytes[i + k] }
            }
            out.append(
                Exit(
                    pid: r.pid, tag: r.tag, status: r.status, startTicks: r.start_ns / nsPerTick, lost: r.lost))
            i += recordSize
        }
        return out
    }

    // MARK: fdmod's map

    /// `self ID`, then `ID ADDRESS` per node (kernel/README.md).
    static func mapText(_ map: NodeMap, me: IPAddress) -> String? {
        guard let id = map[me]?.id else { return nil }
        var s = "self \(id.rawValue)\n"
        for n in map.nodes { s += "\(n.id.rawValue) \(n.address)\n" }
        return s
    }

    /// The first line of fdmod's map as the module holds it ("" when it holds none).
    private func fdmodSelfLine() -> String? {
        let f = open(fdmodMapPath, O_RDONLY | O_CLOEXEC)
        guard f >= 0 else { return nil }
        defer { close(f) }
        var buf = [UInt8](repeating: 0, count: 32)
        let n = read(f, &buf, buf.count)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    private func writeMapIfDue() {
        guard access(fdmodMapPath, F_OK) == 0 else { return }
        let job: (NodeMap, IPAddress)? = lock.withLock {
            if let p = pendingMap {
                latestMap = p
                pendingMap = nil
                failedGeneration = nil
                return p
            }
            return latestMap
        }
        guard let (map, me) = job, let text = Self.mapText(map, me: me) else { return }
        let selfLine = String(text.prefix { $0 != "\n" })
        // A write of this map failed: not again until it changes. Written, and fdmod still holds
        // it (a reloaded fdmod holds no map): nothing to do.
        if lock.withLock({ failedGeneration == map.generation }) { return }
        if lastWrittenGeneration == map.generation, fdmodSelfLine() == selfLine { return }
        let f = open(fdmodMapPath, O_WRONLY | O_CLOEXEC)
        var ok = f >= 0
        var err = ok ? 0 : errno
        if ok {
            let bytes = Array(text.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { write(f, $0.baseAddress, min($0.count, 65536)) }
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    ok = false
                    err = errno
                    break
                }
                off += n
            }
            if close(f) != 0 && ok {
                ok = false
                err = errno
            }
        }
        let first: Bool = lock.withLock {
            if ok {
                counters.mapWrites += 1
                lastWrittenGeneration = map.generation
                return false
            }
            counters.mapWriteErrors += 1
            failedGeneration = map.generation  // not again until the map changes
            return counters.mapWriteErrors == 1
        }
        if !ok, first { sink.write(DaemonEvent.mapWriteFailed(path: fdmodMapPath, error: errnoText(err))) }
    }
}

