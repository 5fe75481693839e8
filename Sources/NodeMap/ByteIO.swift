/// Big-endian byte writer and bounds-checked reader shared by the map file and the wire codecs.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }
    public var count: Int { bytes.count }
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v))
    }
    // One append of the big-endian bytes, not one per byte (each checked the capacity and the
    // buffer's uniqueness: 8 % of a partition's simulation, which encodes many death notices).
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    public mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }
    public mutating func address(_ a: IPAddress) {
        u64(a.hi)
        u64(a.lo)
    }
    /// Overwrites a big-endian UInt16 at `offset` (for length fields written after their content).
    public mutating func patch16(at offset: Int, _ v: UInt16) {
        bytes[offset] = UInt8(v >> 8)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: v)
    }
    public mutating func patch32(at offset: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
}

/// Thrown by `ByteReader` when a field runs past the end of the input.
public struct TruncatedInput: Error, Sendable {
    public let offset: Int
    public let wanted: Int
}

public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    public let end: Int

    public init(_ bytes: [UInt8], offset: Int = 0, end: Int? = nil) {
        self.bytes = bytes
        self.offset = offset
        self.end = min(end ?? bytes.count, bytes.count)
    }

    public var remaining: Int { end - offset }

    private mutating func need(_ n: Int) throws {
        guard n >= 0, offset + n <= end else { throw TruncatedInput(offset: offset, wanted: n) }
    }
    public mutating func u8() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }
    public mutating func u16() throws -> UInt16 {
        try need(2)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }
    public mutating func u32() throws -> UInt32 {
        try need(4)
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return v
    }
    public mutating func u64() throws -> UInt64 {
        try need(8)
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return v
    }
    public mutating func raw(_ n: Int) throws -> ArraySlice<UInt8> {
        try need(n)
        defer { offset += n }
        return bytes[offset..<offset + n]
    }
    public mutating func address() throws -> IPAddress {
        let h = try u64()
        let l = try u64()
        return IPAddress(hi: h, lo: l)
    }
    public mutating func skip(_ n: Int) throws {
        try need(n)
        offset += n
    }
}

/// CRC-32C (Castagnoli), as used by iSCSI, ext4 and SCTP; detects all burst errors up to 32 bits.
public enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func checksum<C: Collection>(_ data: C, seed: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        var c = ~seed
        let t = table
        for b in data { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }
}
