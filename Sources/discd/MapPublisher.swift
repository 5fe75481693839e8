import Cluster
import Dispatch
import Glibc
import MapStore
import NodeMap
import ServiceLifecycle
import Synchronization

/// Writes the map file (only when the map changed) and the status file, off the protocol loop:
/// the loop hands over the map value (copy-on-write, O(1)); sorting, encoding and fsync happen on
/// the writer's queue, which keeps only the newest pending map.
final class MapPublisher: Service, @unchecked Sendable {
    let mapPath: String
    let statusPath: String?
    private let sink: LogSink
    private let queue = DispatchQueue(label: "discd.files")
    private let pending = Mutex<(map: (NodeMap, IPAddress, Instant)?, status: String?, scheduled: Bool)>((nil, nil, false))
    private let writesCount = Atomic<Int>(0)
    private var lastError: String?

    init(mapPath: String, statusPath: String?, sink: LogSink) {
        self.mapPath = mapPath
        self.statusPath = statusPath
        self.sink = sink
    }

    var writes: Int { writesCount.load(ordering: .relaxed) }

    /// As a service: runs until graceful shutdown, which reaches it after the node's (it is listed
    /// before the node in the group), so the final map is handed over first; then every pending
    /// write is finished before the daemon exits.
    func run() async throws {
        try? await gracefulShutdown()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in queue.async { c.resume() } }
    }

    func map(_ m: NodeMap, selfAddress: IPAddress, at now: Instant) {
        enqueue { $0.map = (m, selfAddress, now) }
    }

    func status(_ s: String) {
        guard statusPath != nil else { return }
        enqueue { $0.status = s }
    }

    private func enqueue(_ f: (inout (map: (NodeMap, IPAddress, Instant)?, status: String?, scheduled: Bool)) -> Void) {
        let schedule = pending.withLock { p -> Bool in
            f(&p)
            if p.scheduled { return false }
            p.scheduled = true
            return true
        }
        if schedule { queue.async { self.drain() } }
    }

    private func drain() {
        while true {
            let job = pending.withLock { p -> ((NodeMap, IPAddress, Instant)?, String?)? in
                if p.map == nil && p.status == nil {
                    p.scheduled = false
                    return nil
                }
                defer {
                    p.map = nil
                    p.status = nil
                }
                return (p.map, p.status)
            }
            guard let (m, s) = job else { return }
            if let (map, me, at) = m { writeMap(map, selfAddress: me, at: at) }
            if let s, let sp = statusPath { Self.writeText(s, to: sp) }
        }
    }

    /// The final map and status, written before the daemon exits.
    func final(map: NodeMap, selfAddress: IPAddress, status: String) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.async {
                self.writeMap(map, selfAddress: selfAddress, at: NodeDriver.now())
                if let sp = self.statusPath { Self.writeText(status, to: sp) }
                c.resume()
            }
        }
    }

    private func writeMap(_ map: NodeMap, selfAddress: IPAddress, at: Instant) {
        do {
            try MapFile.write(MapSnapshot(map: map, writtenAt: at, selfAddress: selfAddress), to: mapPath)
            writesCount.add(1, ordering: .relaxed)
            lastError = nil
        } catch {
            let d = "\(error)"
            if d != lastError { sink.write(DaemonEvent.mapWriteFailed(path: mapPath, error: d)) }
            lastError = d
        }
    }

    /// Status text replaced atomically (rename), so a reader never sees half of it; not fsynced
    /// (it is rewritten every second and means nothing after a crash).
    static func writeText(_ s: String, to path: String) {
        try? AtomicFile.write(Array(s.utf8), to: path, durable: false)
    }
}

/// The map file a previous run of the daemon left behind.
enum PreviousMapFile {
    /// This node's incarnation in the last run's map (nil: no file, or we were not in it), or why
    /// the file could not be read (nil when absent: a first start).
    static func inspect(path: String, me: IPAddress) -> (incarnation: UInt64?, problem: String?) {
        do {
            let old = try MapFile.read(path: path)
            return (old.nodes.first(where: { $0.address == me })?.incarnation, nil)
        } catch MapFileError.notFound {
            return (nil, nil)
        } catch {
            return (nil, "\(error)")
        }
    }

    /// Moves an untrusted map file to `PATH.corrupt` (replacing an older one); the new path, or nil.
    static func setAside(_ path: String) -> String? {
        let to = path + ".corrupt"
        return rename(path, to) == 0 ? to : nil
    }

    /// Removes `PATH.tmp.PID` files (see `AtomicFile.write`) whose writer no longer runs: what a
    /// SIGKILL or power cut in the middle of a write leaves. Returns how many were removed.
    @discardableResult
    static func removeStaleTemporaries(of path: String) -> Int {
        let dir = AtomicFile.directory(of: path)
        let prefix = String(path.split(separator: "/", omittingEmptySubsequences: false).last ?? "") + ".tmp."
        guard let d = opendir(dir) else { return 0 }
        defer { closedir(d) }
        var removed = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count)), pid > 0, pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH, unlink(dir + "/" + name) == 0 { removed += 1 }
        }
        return removed
    }
}
