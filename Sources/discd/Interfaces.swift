import Glibc
import NIOCore
import NodeMap

/// A cluster interface as the daemon uses it.
struct ClusterInterface: Sendable {
    let name: String
    let index: Int
    /// The address of the chosen family this node uses on the interface.
    let address: IPAddress
    /// The NIO device to join the group and pick the multicast interface.
    let device: NIONetworkDevice
}

enum AddressFamily: String, CaseIterable {
    case ipv4, ipv6
}

struct ConfigError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum Interfaces {
    /// The interface of the default route (IPv4 table first, then IPv6), from /proc.
    static func defaultRouteInterface() -> String? {
        defaultRouteInterface(route: try? readText("/proc/net/route"), ipv6Route: try? readText("/proc/net/ipv6_route"))
    }

    /// The same from the two tables' text: a line with too few fields is skipped, never read past.
    static func defaultRouteInterface(route: String?, ipv6Route: String?) -> String? {
        if let text = route {
            for line in text.split(separator: "\n").dropFirst() {
                // Iface Destination Gateway Flags RefCnt Use Metric Mask ...: the default route has
                // destination 0 and mask 0 (field 7).
                let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if f.count >= 8, f[1] == "00000000", f[7] == "00000000" { return String(f[0]) }
            }
        }
        if let text = ipv6Route {
            for line in text.split(separator: "\n") {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                if f.count >= 10, f[0] == String(repeating: "0", count: 32), f[1] == "00", f[9] != "lo" {
                    return String(f[9])
                }
            }
        }
        return nil
    }

    static func readText(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func ipAddress(_ s: SocketAddress) -> IPAddress? {
        switch s {
        case .v4(let a):
            var sin = a.address
            return withUnsafeBytes(of: &sin.sin_addr) { IPAddress(bytes: Array($0)) }
        case .v6(let a):
            var sin6 = a.address
            return withUnsafeBytes(of: &sin6.sin6_addr) { IPAddress(bytes: Array($0)) }
        default:
            return nil
        }
    }

    /// All addresses per interface name.
    static func addresses() throws -> [(device: NIONetworkDevice, address: IPAddress)] {
        try System.enumerateDevices().compactMap { d in
            guard let a = d.address, let ip = ipAddress(a) else { return nil }
            return (d, ip)
        }
    }

    /// Resolves `names` to cluster interfaces with an address of `family`; a clear error otherwise.
    static func resolve(_ names: [String], family: AddressFamily?) throws -> (AddressFamily, [ClusterInterface]) {
        let all = try addresses()
        let known = Set(all.map { $0.device.name })
        for n in names where !known.contains(n) {
            let exists = if_nametoindex(n) != 0
            throw ConfigError(
                exists
                    ? "interface \(n) has no IP address"
                    : "no such interface: \(n) (known: \(known.sorted().joined(separator: ", ")))")
        }
        let fam: AddressFamily
        if let f = family {
            fam = f
        } else {
            fam = all.contains { $0.device.name == names[0] && $0.address.isIPv4 } ? .ipv4 : .ipv6
        }
        var out: [ClusterInterface] = []
        for n in names {
            let mine = all.filter { $0.device.name == n && ($0.address.isIPv4 == (fam == .ipv4)) }
            // Prefer a global/ULA IPv6 address; a link-local one only if there is nothing else.
            guard let pick = mine.first(where: { !$0.address.isLinkLocalV6 }) ?? mine.first else {
                throw ConfigError("interface \(n) has no \(fam == .ipv4 ? "IPv4" : "IPv6") address")
            }
            out.append(ClusterInterface(name: n, index: pick.device.interfaceIndex, address: pick.address, device: pick.device))
        }
        return (fam, out)
    }

    /// Other addresses of the host on `names` (besides `primary`), as aliases.
    static func otherAddresses(on names: [String], family: AddressFamily, excluding primary: IPAddress) throws -> [IPAddress] {
        var seen = Set<IPAddress>([primary])
        var out: [IPAddress] = []
        for (d, a) in try addresses() where names.contains(d.name) && a.isIPv4 == (family == .ipv4) && !a.isLinkLocalV6 {
            if seen.insert(a).inserted { out.append(a) }
        }
        return out
    }
}
