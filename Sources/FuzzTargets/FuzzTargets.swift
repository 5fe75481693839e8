import Auth
import Cluster
import Detector
import Discovery
#if canImport(Glibc)
import Glibc
#endif
import ControlProtocol
import NodeMap
import Wire

/// What the fuzzers feed untrusted bytes to (`make fuzz`, scripts/fuzz.sh; docs/TESTING.md): the
/// same entry points the daemon and showmap use. Each target must never trap on any input; where a
/// round trip is defined it must hold (a violated property traps, so libFuzzer reports it).
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// A datagram as it arrives: decoded, then handed to a started node without keys.
    case datagram
    /// The same to a node with a cluster key, plus the input re-signed with that key, so that the
    /// paths behind the tag check are reached too (replay window, map work).
    case keyed
    /// The binary map file decoder (and encode → decode of whatever it accepts).
    case mapfile
    /// The openMosix mosix.map parser.
    case mosix
    /// A control-socket request line.
    case control

    /// The target named by $DISCD_FUZZ (the fuzzer binary serves them all); exits 2 if unset or unknown.
    public static let fromEnvironment: FuzzTarget = {
        guard let name = getenv("DISCD_FUZZ").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) else {
            let msg = Array("discd-fuzz: set DISCD_FUZZ to one of \(allCases.map(\.rawValue))\n".utf8)
            _ = msg.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            exit(2)
        }
        return t
    }()

    static let key = try! ClusterKey(bytes: (0..<32).map { UInt8($0 &* 7 &+ 1) })
    static let me = IPAddress("10.1.0.1")!
    static let keyedAuth = AuthConfig(keyring: try! Keyring([key]), counterSeed: 1 << 20)

    public func run(_ bytes: [UInt8]) {
        switch self {
        case .datagram:
            feed(bytes, auth: nil)
        case .keyed:
            feed(bytes, auth: Self.keyedAuth)
            if var m = try? Message.decode(bytes) {
                m.header.flags.insert(.authenticated)
                m.header.keyID = Self.key.id
                if var signed = try? m.encode() {
                    Seal.sign(&signed, key: Self.key)
                    feed(signed, auth: Self.keyedAuth)
                }
            }
        case .mapfile:
            // As it is, then with its checksum made right (mutations rarely keep the CRC-32C, and
            // the structure behind it must be as robust).
            var fixed = bytes
            if bytes.count > 4 {
                var w = ByteWriter(capacity: bytes.count)
                w.raw(bytes.dropLast(4))
                w.u32(CRC32C.checksum(w.bytes))   // the trailer as MapFile.encode writes it
                fixed = w.bytes
            }
            for b in [bytes, fixed] {
                if let snap = try? MapFile.decode(b, path: "fuzz") {
                    let again = try? MapFile.decode(MapFile.encode(snap), path: "fuzz")
                    precondition(again?.nodes.map(\.address) == snap.nodes.map(\.address), "map file round trip changed the nodes")
                }
            }
        case .mosix:
            if let lines = try? MosixMap.parse(String(decoding: bytes, as: UTF8.self)) {
                _ = MosixMap.claims(lines)
            }
        case .control:
            _ = try? ControlRequest.parse(String(decoding: bytes, as: UTF8.self))
        }
    }

    /// Valid inputs to start from (libFuzzer mutates them; the corpus test replays them): every
    /// message type, a map file, mosix.map lines, every control request.
    public var seeds: [[UInt8]] {
        let a = IPAddress("10.1.0.2")!
        switch self {
        case .datagram, .keyed:
            let bodies: [Body] = [
                .announce(NodeInfo(aliases: [Alias(IPAddress("10.2.0.2")!, source: .interface)], heartbeatPort: 7778)),
                .join(NodeInfo(heartbeatPort: 7778)), .leave,
                .mapSync(part: 0, parts: 1, entries: [SyncEntry(Node(address: a, id: NodeID(2)!, preferredID: NodeID(2)), now: Instant(nanos: 0))]),
                .heartbeat(sequence: 7, periodMillis: 150), .probeRequest(target: Self.me, targetIncarnation: 1, nonce: 3),
                .probe(requester: a, nonce: 3), .probeAck(target: Self.me, targetIncarnation: 1, nonce: 3),
                .suspect(target: Self.me, targetIncarnation: 1), .dead(target: a, targetIncarnation: 1, targetID: 2),
                .processExit(ProcessExit(node: a, pid: 42, startTime: 9, status: 9, tag: 5, source: .kernel, name: "rank0")),
                .watch,
                .syncRequest(SyncRequest(session: 4, salt: 9, flags: .pull, sums: (0..<NodeMap.digestBuckets).map { UInt8($0 & 255) })),
                .syncEntries(
                    SyncEntries(
                        session: 4, flags: [.reply, .last], covered: [3],
                        entries: [SyncEntry(Node(address: a, id: NodeID(2)!, preferredID: NodeID(2)), now: Instant(nanos: 0))])),
                .offer(members: 3, digest: 0x0123_4567_89AB_CDEF),
                .deaths([
                    DeathNotice(target: a, targetIncarnation: 1, targetID: 2),
                    DeathNotice(target: IPAddress("10.1.0.3")!, targetIncarnation: 4, targetID: 3),
                ]),
            ]
            return bodies.compactMap { b in
                let h = Header(
                    type: b.type, flags: [], cluster: "fuzz", senderID: 2, incarnation: 5, messageID: 1, origin: a)
                return try? Message(header: h, body: b).encode()
            }
        case .mapfile:
            var map = NodeMap()
            _ = map.observe(NodeClaim(address: Self.me), now: Instant(nanos: 1))
            _ = map.observe(NodeClaim(address: a, aliases: [Alias(IPAddress("fd00::2")!, source: .routed)]), now: Instant(nanos: 2))
            return [MapFile.encode(MapSnapshot(map: map, writtenAt: Instant(nanos: 3), selfAddress: Self.me))]
        case .mosix:
            return [Array("# first-ID first-address count\n1 10.1.0.1 2\n3 10.1.0.3 1\n3 10.2.0.3 ALIAS\n".utf8)]
        case .control:
            return [
                #"{"op":"subscribe","since":5,"spaces":["discd.process"],"names":["PROC_EXIT"],"severity":"ERROR","format":"json"}"#,
                #"{"op":"watch","pid":1234,"tag":7,"notify":true}"#, #"{"op":"kernel","attach":false}"#,
            ].map { Array($0.utf8) }
        }
    }

    /// Writes `seeds` as files seed-0, seed-1, ... into $DISCD_FUZZ_SEED_DIR, if set.
    public func writeSeedsFromEnvironment() {
        guard let dir = getenv("DISCD_FUZZ_SEED_DIR").map({ String(cString: $0) }) else { return }
        for (i, s) in seeds.enumerated() {
            let fd = open("\(dir)/seed-\(i)", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { continue }
            _ = s.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
    }

    /// A fresh started node (detector on) gets the bytes as one datagram, then as up to 8 datagrams
    /// split at 0xFF 0xFF, with a tick between them.
    private func feed(_ bytes: [UInt8], auth: AuthConfig?) {
        var cfg = ClusterConfig(
            cluster: "fuzz", me: SelfInfo(address: Self.me, heartbeatPort: 7778), incarnation: 1,
            detector: try? DetectorSettings(), seed: 1, logLevel: .debug)
        cfg.auth = auth
        var now = Instant(nanos: 1_000_000_000)
        var node = ClusterNode(config: cfg, now: now)
        _ = node.start(now: now)
        _ = node.receive(bytes, interface: 0, now: now)
        var parts: [[UInt8]] = [[]]
        var i = 0
        while i < bytes.count, parts.count <= 8 {
            if i + 1 < bytes.count, bytes[i] == 0xFF, bytes[i + 1] == 0xFF {
                parts.append([])
                i += 2
                continue
            }
            parts[parts.count - 1].append(bytes[i])
            i += 1
        }
        if parts.count > 1 {
            for p in parts {
                now = now + .milliseconds(50)
                _ = node.receive(p, interface: 0, now: now)
                _ = node.tick(now: now)
            }
        }
        if bytes.count >= 4 {
            _ = node.receiveImmediate(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3]), now: now)
        }
    }
}
