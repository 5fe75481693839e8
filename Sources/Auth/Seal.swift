import Crypto
import NodeMap
import Wire

/// The authentication tag of a datagram (docs/PROTOCOL.md, "Authentication"): HMAC-SHA256 with a
/// cluster key over the whole datagram but the tag itself, with the hop count taken as 0 (gateways
/// increment it when they relay, and the tag must survive that), truncated to `Wire.tagLength`
/// bytes. The header carries the key's ID and the sender's replay counter; both are covered.
public enum Seal {
    /// Offset of the hop count in the fixed header (magic u16, version u8, type u8, flags u8, hops u8).
    public static let hopsOffset = 5
    public static let flagsOffset = 4

    /// Fills in the tag of a datagram encoded with the `.authenticated` flag (its last
    /// `Wire.tagLength` bytes, written as zeros by the encoder).
    public static func sign(_ bytes: inout [UInt8], key: ClusterKey) {
        precondition(bytes.count >= Wire.fixedHeader + Wire.tagLength, "sign: not an encoded datagram")
        let tag = mac(bytes, key: key)
        let start = bytes.count - Wire.tagLength
        for i in 0..<Wire.tagLength { bytes[start + i] = tag[i] }
    }

    /// Whether the datagram's tag is right for `key` (constant time in the tag's bytes).
    public static func verify(_ bytes: [UInt8], key: ClusterKey) -> Bool {
        guard bytes.count >= Wire.fixedHeader + Wire.tagLength else { return false }
        let want = mac(bytes, key: key)
        let start = bytes.count - Wire.tagLength
        var diff: UInt8 = 0
        for i in 0..<Wire.tagLength { diff |= want[i] ^ bytes[start + i] }
        return diff == 0
    }

    static func mac(_ bytes: [UInt8], key: ClusterKey) -> [UInt8] {
        let end = bytes.count - Wire.tagLength
        var h = HMAC<SHA256>(key: SymmetricKey(data: key.bytes))
        h.update(data: bytes[0..<hopsOffset])
        h.update(data: [UInt8(0)])
        h.update(data: bytes[(hopsOffset + 1)..<end])
        return Array(h.finalize().prefix(Wire.tagLength))
    }
}

/// Replay protection: per (origin, key), the highest replay counter accepted and which of the 64
/// below it were seen (the IPsec window), so a datagram is accepted once, a little reordering is
/// tolerated, and anything older than the window is refused. Senders start their counter from the
/// wall clock (milliseconds << 16) at every start, so it grows across restarts.
public struct ReplayGuard: Sendable {
    public static let window: UInt64 = 64
    struct Key: Hashable, Sendable {
        let origin: IPAddress
        let keyID: UInt32
    }
    struct State: Sendable {
        var highest: UInt64
        var seen: UInt64  // bit i: highest - i was accepted
    }
    private var states: [Key: State] = [:]
    /// Most (origin, key) pairs remembered; beyond it the oldest half is forgotten (an entry only
    /// exists for a datagram whose tag verified, so only holders of the key can make entries).
    public let capacity: Int
    private var order: [Key] = []

    public init(capacity: Int = 131_072) { self.capacity = capacity }

    public enum Verdict: Equatable, Sendable { case fresh, replayed, tooOld }

    /// Accepts `counter` from `origin` under key `keyID` once; call only for verified datagrams.
    public mutating func check(origin: IPAddress, keyID: UInt32, counter: UInt64) -> Verdict {
        let k = Key(origin: origin, keyID: keyID)
        guard var s = states[k] else {
            if states.count >= capacity { forgetOldest() }
            states[k] = State(highest: counter, seen: 1)
            order.append(k)
            return .fresh
        }
        if counter > s.highest {
            let shift = counter - s.highest
            s.seen = shift >= Self.window ? 1 : (s.seen << shift) | 1
            s.highest = counter
            states[k] = s
            return .fresh
        }
        let back = s.highest - counter
        guard back < Self.window else { return .tooOld }
        let bit: UInt64 = 1 << back
        if s.seen & bit != 0 { return .replayed }
        s.seen |= bit
        states[k] = s
        return .fresh
    }

    /// What `check` would answer, without recording anything: a datagram whose counter was already
    /// seen (or fell out of the window) is refused before its tag is computed, so a flood of replays
    /// costs no HMAC. Only `check`, after the tag verified, records a counter.
    public func peek(origin: IPAddress, keyID: UInt32, counter: UInt64) -> Verdict {
        guard let s = states[Key(origin: origin, keyID: keyID)], counter <= s.highest else { return .fresh }
        let back = s.highest - counter
        guard back < Self.window else { return .tooOld }
        return s.seen & (1 << back) != 0 ? .replayed : .fresh
    }

    private mutating func forgetOldest() {
        let drop = order.prefix(order.count / 2)
        for k in drop { states[k] = nil }
        order.removeFirst(drop.count)
    }

    public var count: Int { states.count }
}
