#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The node map as stored on disk: a versioned binary file (see docs/MAPFILE.md).
public struct MapSnapshot: Hashable, Sendable {
    public var generation: UInt64
    /// Wall-clock instant (Unix ns) of map time 0; node `lastHeard` values are map time.
    public var timeBaseUnixNanos: Int64
    /// Map time at which the file was written.
    public var writtenAt: Instant
    /// Primary address of the node that wrote the file (zero when unknown).
    public var selfAddress: IPAddress
    public var nodes: [Node]

    public init(generation: UInt64, timeBaseUnixNanos: Int64, writtenAt: Instant, selfAddress: IPAddress, nodes: [Node]) {
        self.generation = generation
        self.timeBaseUnixNanos = timeBaseUnixNanos
        self.writtenAt = writtenAt
        self.selfAddress = selfAddress
        self.nodes = nodes
    }

    public init(map: NodeMap, writtenAt: Instant, selfAddress: IPAddress?) {
        self.init(
            generation: map.generation, timeBaseUnixNanos: map.timeBaseUnixNanos, writtenAt: writtenAt,
            selfAddress: selfAddress ?? .zero, nodes: map.sortedByID())
    }

    /// Wall-clock time (Unix ns) a node was last heard.
    public func lastHeardUnixNanos(_ n: Node) -> Int64 { timeBaseUnixNanos &+ Int64(truncatingIfNeeded: n.lastHeard.nanos) }
}

public enum MapFileError: Error, Equatable, CustomStringConvertible {
    case notFound(path: String)
    case io(path: String, operation: String, errno: Int32)
    case tooShort(path: String, size: Int)
    case badMagic(path: String)
    case unsupportedVersion(path: String, version: UInt16)
    case checksumMismatch(path: String, stored: UInt32, computed: UInt32)
    case malformed(path: String, reason: String)

    public var description: String {
        switch self {
        case .notFound(let p): return "\(p): no such map file"
        case .io(let p, let op, let e): return "\(p): \(op) failed: \(String(cString: strerror(e)))"
        case .tooShort(let p, let n):
            return "\(p): truncated map file (\(n) bytes, a map file has at least \(MapFile.headerSize + 4))"
        case .badMagic(let p): return "\(p): not a discd map file (bad magic)"
        case .unsupportedVersion(let p, let v):
            return "\(p): map file version \(v) is not supported (this build reads version \(MapFile.version))"
        case .checksumMismatch(let p, let s, let c):
            return "\(p): corrupt map file (checksum \(hex(s)) stored, \(hex(c)) computed)"
        case .malformed(let p, let r): return "\(p): corrupt map file: \(r)"
        }
    }
}

private func hex(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s
}

/// Binary codec and atomic writer for the map file.
///
/// Layout (big-endian), version 1:
/// ```
/// header (64 bytes)
///   0  magic      "DISCDMAP"
///   8  version    u16 = 1
///  10  headerLen  u16 = 64
///  12  flags      u32 = 0
///  16  generation u64
///  24  timeBase   i64   Unix ns of map time 0
///  32  writtenAt  u64   map time ns
///  40  nodeCount  u32
///  44  bodyLen    u32
///  48  self       16 bytes (IPv6 or IPv4-mapped address)
/// body: nodeCount records
///   recLen u16 (whole record), id u16, preferred u16 (0 = none), flags u8 (bit0 explicit),
///   state u8, hops u8, aliasCount u8, address 16, incarnation u64, lastHeard u64, hbPort u16,
///   capCount u8, aliases aliasCount × (address 16, source u8),
///   capabilities capCount × (type u8, len u8, value len bytes)
/// trailer: crc32c u32 over header and body
/// ```
public enum MapFile {
    public static let magic: [UInt8] = Array("DISCDMAP".utf8)
    public static let version: UInt16 = 1
    public static let headerSize = 64
    public static let maxNodes = 65535

    public static func encode(_ s: MapSnapshot) -> [UInt8] {
        var w = ByteWriter(capacity: headerSize + s.nodes.count * 64 + 4)
        w.raw(magic)
        w.u16(version)
        w.u16(UInt16(headerSize))
        w.u32(0)
        w.u64(s.generation)
        w.u64(UInt64(bitPattern: s.timeBaseUnixNanos))
        w.u64(s.writtenAt.nanos)
        w.u32(UInt32(s.nodes.count))
        let bodyLenAt = w.count
        w.u32(0)
        w.address(s.selfAddress)
        let bodyStart = w.count
        for n in s.nodes {
            let recStart = w.count
            w.u16(0)
            w.u16(n.id.rawValue)
            w.u16(n.preferredID?.rawValue ?? 0)
            w.u8(n.explicitID ? 1 : 0)
            w.u8(n.state.rawValue)
            w.u8(n.hops)
            w.u8(UInt8(min(n.aliases.count, 255)))
            w.address(n.address)
            w.u64(n.incarnation)
            w.u64(n.lastHeard.nanos)
            w.u16(n.heartbeatPort)
            w.u8(UInt8(min(n.capabilities.count, 255)))
            for a in n.aliases.prefix(255) {
                w.address(a.address)
                w.u8(a.source.rawValue)
            }
            for c in n.capabilities.prefix(255) { CapabilityCodec.write(c, to: &w) }
            w.patch16(at: recStart, UInt16(w.count - recStart))
        }
        w.patch32(at: bodyLenAt, UInt32(w.count - bodyStart))
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// Decodes and validates a map file's bytes; `path` names the file in errors.
    public static func decode(_ bytes: [UInt8], path: String) throws -> MapSnapshot {
        guard bytes.count >= headerSize + 4 else {
            if bytes.count >= 8 && Array(bytes[0..<8]) != magic { throw MapFileError.badMagic(path: path) }
            throw MapFileError.tooShort(path: path, size: bytes.count)
        }
        guard Array(bytes[0..<8]) == magic else { throw MapFileError.badMagic(path: path) }
        func bad(_ r: String) -> MapFileError { .malformed(path: path, reason: r) }
        do {
            var r = ByteReader(bytes)
            try r.skip(8)
            let v = try r.u16()
            guard v == version else { throw MapFileError.unsupportedVersion(path: path, version: v) }
            let hlen = try r.u16()
            guard Int(hlen) == headerSize else { throw bad("header length \(hlen), expected \(headerSize)") }
            let body = Int(try { () throws -> UInt32 in
                var rr = ByteReader(bytes, offset: 44)
                return try rr.u32()
            }())
            let expected = headerSize + body + 4
            guard bytes.count == expected else {
                throw bytes.count < expected
                    ? MapFileError.malformed(path: path, reason: "truncated: \(bytes.count) bytes, header says \(expected)")
                    : MapFileError.malformed(path: path, reason: "\(bytes.count - expected) trailing bytes after the map")
            }
            let stored = UInt32(bytes[expected - 4]) << 24 | UInt32(bytes[expected - 3]) << 16
                | UInt32(bytes[expected - 2]) << 8 | UInt32(bytes[expected - 1])
            let computed = CRC32C.checksum(bytes[0..<(expected - 4)])
            guard stored == computed else {
                throw MapFileError.checksumMismatch(path: path, stored: stored, computed: computed)
            }
            _ = try r.u32()  // flags: none defined in version 1
            let generation = try r.u64()
            let timeBase = Int64(bitPattern: try r.u64())
            let writtenAt = Instant(nanos: try r.u64())
            let count = Int(try r.u32())
            _ = try r.u32()
            let me = try r.address()
            guard count <= maxNodes else { throw bad("\(count) nodes (at most \(maxNodes))") }
            var nodes: [Node] = []
            nodes.reserveCapacity(count)
            var seenIDs = Set<UInt16>()
            var seenAddrs = Set<IPAddress>()
            let bodyEnd = headerSize + body
            for i in 0..<count {
                let start = r.offset
                let recLen = Int(try r.u16())
                guard recLen >= 45, start + recLen <= bodyEnd else { throw bad("record \(i) has length \(recLen)") }
                var rr = ByteReader(bytes, offset: start + 2, end: start + recLen)
                guard let id = NodeID(rawValue: try rr.u16()) else { throw bad("record \(i) has node ID 0") }
                let pref = NodeID(rawValue: try rr.u16())
                let flags = try rr.u8()
                guard let state = NodeState(rawValue: try rr.u8()) else { throw bad("record \(i) has an unknown state") }
                let hops = try rr.u8()
                let aliasCount = Int(try rr.u8())
                let addr = try rr.address()
                let inc = try rr.u64()
                let heard = try rr.u64()
                let port = try rr.u16()
                let capCount = Int(try rr.u8())
                var aliases: [Alias] = []
                for _ in 0..<aliasCount {
                    let a = try rr.address()
                    guard let src = AliasSource(rawValue: try rr.u8()) else {
                        throw bad("record \(i) has an alias of unknown source")
                    }
                    aliases.append(Alias(a, source: src))
                }
                var caps: [Capability] = []
                for _ in 0..<capCount { caps.append(try CapabilityCodec.read(&rr)) }
                guard rr.remaining == 0 else { throw bad("record \(i) has \(rr.remaining) unread bytes") }
                guard seenIDs.insert(id.rawValue).inserted else { throw bad("node ID \(id) appears twice") }
                guard seenAddrs.insert(addr).inserted else { throw bad("address \(addr) appears twice") }
                guard flags & ~1 == 0 else { throw bad("record \(i) has unknown flags \(flags)") }
                nodes.append(
                    Node(
                        address: addr, id: id, preferredID: pref, explicitID: flags & 1 != 0, aliases: aliases,
                        state: state, incarnation: inc, lastHeard: Instant(nanos: heard), hops: hops, heartbeatPort: port,
                        capabilities: caps))
                try r.skip(recLen - 2)
            }
            guard r.offset == bodyEnd else { throw bad("\(bodyEnd - r.offset) bytes after the last record") }
            return MapSnapshot(
                generation: generation, timeBaseUnixNanos: timeBase, writtenAt: writtenAt, selfAddress: me,
                nodes: nodes)
        } catch let e as MapFileError {
            throw e
        } catch let t as TruncatedInput {
            throw bad("a field at byte \(t.offset) runs past its record")
        }
    }
}

/// Type-length-value codec for capabilities, shared by the map file and the wire format.
public enum CapabilityCodec {
    public static let rdmaType: UInt8 = 1

    public static func write(_ c: Capability, to w: inout ByteWriter) {
        switch c {
        case .rdma(let gh, let gl, let qpn, let qkey):
            w.u8(rdmaType)
            w.u8(24)
            w.u64(gh)
            w.u64(gl)
            w.u32(qpn)
            w.u32(qkey)
        case .unknown(let t, let v):
            w.u8(t)
            w.u8(UInt8(min(v.count, 255)))
            w.raw(v.prefix(255))
        }
    }

    public static func read(_ r: inout ByteReader) throws -> Capability {
        let t = try r.u8()
        let len = Int(try r.u8())
        var v = ByteReader(Array(try r.raw(len)))
        if t == rdmaType && len == 24 {
            return .rdma(gidHi: try v.u64(), gidLo: try v.u64(), qpn: try v.u32(), qkey: try v.u32())
        }
        return .unknown(type: t, value: v.bytes)
    }
}
