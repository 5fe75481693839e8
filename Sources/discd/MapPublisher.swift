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
