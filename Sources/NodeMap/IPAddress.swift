#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address held in 16 bytes; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
///
/// Pure value type: parsing and formatting touch no socket and no resolver.
public struct IPAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public enum Family: UInt8, Sendable { case v4 = 4, v6 = 6 }

    /// The high and low 64 bits of the 16-byte address, network order folded big-endian.
    public let hi: UInt64
    public let lo: UInt64

    public init(hi: UInt64, lo: UInt64) {
        self.hi = hi
        self.lo = lo
    }

    /// An IPv4 address from its 32-bit value (`a.b.c.d` = a<<24 | b<<16 | c<<8 | d).
    public init(v4 value: UInt32) {
        self.hi = 0
        self.lo = 0x0000_FFFF_0000_0000 | UInt64(value)
    }

    /// An address from 4 or 16 network-order bytes.
    public init?<C: Collection>(bytes: C) where C.Element == UInt8 {
        let b = Array(bytes)
        switch b.count {
        case 4:
            self.init(v4: UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]))
        case 16:
            var h: UInt64 = 0
            var l: UInt64 = 0
            for i in 0..<8 { h = h << 8 | UInt64(b[i]) }
            for i in 8..<16 { l = l << 8 | UInt64(b[i]) }
            self.init(hi: h, lo: l)
        default:
            return nil
        }
    }

    /// Parses dotted-quad IPv4 or textual IPv6 (RFC 4291); a zone suffix (`%eth0`) is not accepted.
    public init?(_ text: String) {
        if text.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &a) { Array($0) }
            self.init(bytes: bytes)
        } else {
            var a = in_addr()
            guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &a) { Array($0) }
            self.init(bytes: bytes)
        }
    }

    public var family: Family { (hi == 0 && lo >> 32 == 0x0000_FFFF) ? .v4 : .v6 }
    public var isIPv4: Bool { family == .v4 }

    /// The IPv4 value; only meaningful when `family == .v4`.
    public var v4Value: UInt32 { UInt32(truncatingIfNeeded: lo) }

    /// The 16 bytes (IPv4-mapped for IPv4).
    public var bytes16: [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 { out[i] = UInt8(truncatingIfNeeded: hi >> (56 - 8 * UInt64(i))) }
        for i in 0..<8 { out[8 + i] = UInt8(truncatingIfNeeded: lo >> (56 - 8 * UInt64(i))) }
        return out
    }

    /// The address bytes in their own family's length (4 or 16).
    public var bytes: [UInt8] { isIPv4 ? Array(bytes16[12..<16]) : bytes16 }

    public var isUnspecified: Bool { (hi == 0 && lo == 0) || (isIPv4 && v4Value == 0) }
    public var isMulticast: Bool { isIPv4 ? (v4Value >> 28) == 0xE : (hi >> 56) == 0xFF }
    public var isLinkLocalV6: Bool { !isIPv4 && (hi >> 54) == (0xFE80 >> 6) }

    /// The address `n` after this one in the same family, or nil on overflow.
    public func advanced(by n: UInt64) -> IPAddress? {
        if isIPv4 {
            let (v, o) = UInt64(v4Value).addingReportingOverflow(n)
            guard !o, v <= UInt64(UInt32.max) else { return nil }
            return IPAddress(v4: UInt32(v))
        }
        let (l, o) = lo.addingReportingOverflow(n)
        if !o { return IPAddress(hi: hi, lo: l) }
        let (h, o2) = hi.addingReportingOverflow(1)
        return o2 ? nil : IPAddress(hi: h, lo: l)
    }

    public var description: String {
        if isIPv4 {
            let v = v4Value
            return "\(v >> 24).\(v >> 16 & 0xFF).\(v >> 8 & 0xFF).\(v & 0xFF)"
        }
        var a = in6_addr()
        let b = bytes16
        withUnsafeMutableBytes(of: &a) { raw in for i in 0..<16 { raw[i] = b[i] } }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        guard inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil else { return "?" }
        return String(cString: buf)
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        // IPv4 (mapped) sorts before global IPv6 because ::ffff:0:0/96 is low in the space.
        (a.hi, a.lo) < (b.hi, b.lo)
    }

    public static let zero = IPAddress(hi: 0, lo: 0)
}
