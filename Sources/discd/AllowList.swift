import NodeMap

/// `--allow-from CIDR,...` (docs/SECURITY.md): datagrams are taken only from these source
/// addresses — the UDP source address, or on RDMA the source GID of the packet's global route header
/// (on RoCE v2 the sender's IP address; on InfiniBand a GID, so list the fabric's GID prefix there).
/// Everything else is counted (`not_allowed`) and dropped before the node sees it.
struct SourceAllowList: Sendable, Equatable {
    struct Prefix: Sendable, Equatable {
        let hi: UInt64
        let lo: UInt64
        /// Leading bits of the 128-bit form that must match (an IPv4 /n is 96 + n).
        let bits: Int
    }
    let prefixes: [Prefix]

    init(parsing text: String) throws(ConfigError) {
        var out: [Prefix] = []
        for item in text.split(separator: ",").map({ String($0).trimmed }) where !item.isEmpty {
            let parts = item.split(separator: "/", maxSplits: 1).map(String.init)
            guard let a = IPAddress(parts[0]) else { throw ConfigError("--allow-from: \(item) is not an address or CIDR") }
            let max = a.isIPv4 ? 32 : 128
            var n = max
            if parts.count == 2 {
                guard let v = Int(parts[1]), (0...max).contains(v) else {
                    throw ConfigError("--allow-from: \(item): prefix length must be 0-\(max)")
                }
                n = v
            }
            let bits = a.isIPv4 ? 96 + n : n
            let (mhi, mlo) = Self.mask(bits)
            guard a.hi & ~mhi == 0, a.lo & ~mlo == 0 else {
                throw ConfigError("--allow-from: \(item) has host bits set (did you mean \(Self.network(a, bits))/\(n)?)")
            }
            out.append(Prefix(hi: a.hi, lo: a.lo, bits: bits))
        }
        guard !out.isEmpty else { throw ConfigError("--allow-from: no address or CIDR given") }
        prefixes = out
    }

    func contains(_ a: IPAddress) -> Bool {
        prefixes.contains { p in
            let (mhi, mlo) = Self.mask(p.bits)
            return a.hi & mhi == p.hi && a.lo & mlo == p.lo
        }
    }

    static func mask(_ bits: Int) -> (UInt64, UInt64) {
        let hi: UInt64 = bits >= 64 ? .max : (bits == 0 ? 0 : ~UInt64(0) << (64 - bits))
        let lo: UInt64 = bits >= 128 ? .max : (bits <= 64 ? 0 : ~UInt64(0) << (128 - bits))
        return (hi, lo)
    }

    static func network(_ a: IPAddress, _ bits: Int) -> IPAddress {
        let (mhi, mlo) = mask(bits)
        return IPAddress(hi: a.hi & mhi, lo: a.lo & mlo)
    }
}
