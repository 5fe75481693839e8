import Crypto
import ExtrasBase64

/// A cluster key: 32 random bytes. Its ID (the header's keyID) is derived from the key, so every
/// node that holds the key agrees on it and the key itself never travels.
public struct ClusterKey: Sendable, Equatable {
    public static let length = 32
    public let id: UInt32
    let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(KeyError) {
        guard bytes.count == Self.length else { throw .wrongLength(bytes.count) }
        self.bytes = bytes
        var h = SHA256()
        h.update(data: Array("discd cluster key id".utf8))
        h.update(data: bytes)
        let d = Array(h.finalize())
        let v = UInt32(d[0]) << 24 | UInt32(d[1]) << 16 | UInt32(d[2]) << 8 | UInt32(d[3])
        id = v == 0 ? 1 : v  // 0 means "no key" on the wire
    }
}

public enum KeyError: Error, Equatable, CustomStringConvertible {
    case wrongLength(Int)
    case notBase64(line: Int)
    case noKey
    case duplicate(line: Int)
    case permissions(mode: UInt32)
    case notRegularFile
    case unreadable(String)
    case exists(String)

    public var description: String {
        switch self {
        case .wrongLength(let n): "a key is \(ClusterKey.length) bytes, this one \(n)"
        case .notBase64(let l): "line \(l) is not base64"
        case .noKey: "no key in the file"
        case .duplicate(let l): "line \(l) repeats a key"
        case .permissions(let m): "mode \(String(m, radix: 8)) lets group or others read it (chmod 600)"
        case .notRegularFile: "not a regular file"
        case .unreadable(let s): s
        case .exists(let s): s
        }
    }
}

/// The keys a node accepts, the first of them primary (the one it signs with). Rotation, as Serf's
/// keyring: add the new key (second line) on every node, then make it primary (first line) on
/// every node, then remove the old one — each step a SIGHUP, no downtime (docs/SECURITY.md).
public struct Keyring: Sendable, Equatable {
    public let keys: [ClusterKey]
    public var primary: ClusterKey { keys[0] }

    public init(_ keys: [ClusterKey]) throws(KeyError) {
        guard !keys.isEmpty else { throw .noKey }
        self.keys = keys
    }

    public func key(id: UInt32) -> ClusterKey? { keys.first { $0.id == id } }

    /// The key file's text: one base64 key per line (the first primary); blank lines and lines
    /// starting with `#` are ignored.
    public static func parse(_ text: String) throws(KeyError) -> Keyring {
        var keys: [ClusterKey] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let bytes = try? Base64.decode(string: line) else { throw .notBase64(line: i + 1) }
            let k = try ClusterKey(bytes: bytes)
            if keys.contains(where: { $0.id == k.id }) { throw .duplicate(line: i + 1) }
            keys.append(k)
        }
        return try Keyring(keys)
    }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
