/// Parses durations as operators write them: `100ms`, `1s`, `2.5s`, `500us`, `1m`, `250000ns`.
public enum DurationText {
    public struct Invalid: Error, CustomStringConvertible {
        public let text: String
        public var description: String { "'\(text)' is not a duration (examples: 100ms, 1s, 2.5s, 500us)" }
    }

    /// Nanoseconds.
    public static func parse(_ text: String) throws -> UInt64 {
        let t = text.trimmingCharacters(in: " ")
        let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        for (u, scale) in units where t.hasSuffix(u) {
            let num = String(t.dropLast(u.count))
            // "ms" also ends in "s": only accept a pure number before the unit.
            guard let v = Double(num), v >= 0, v.isFinite, v * scale < 1.8e19 else { continue }
            return UInt64(v * scale)
        }
        throw Invalid(text: text)
    }

    public static func format(_ ns: UInt64) -> String {
        if ns >= 1_000_000_000 && ns % 1_000_000 == 0 { return trim(Double(ns) / 1e9) + "s" }
        if ns >= 1_000_000 { return trim(Double(ns) / 1e6) + "ms" }
        if ns >= 1_000 { return trim(Double(ns) / 1e3) + "us" }
        return "\(ns)ns"
    }

    /// A compact age for tables: "0.4s" under 10 s, then "59s", "12m3s", "3h4m", "2d5h".
    public static func age(nanos: Int64) -> String {
        let ns = max(0, nanos)
        if ns < 10_000_000_000 {
            let tenths = ns / 100_000_000
            return "\(tenths / 10).\(tenths % 10)s"
        }
        let s = ns / 1_000_000_000
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(s % 60)s" }
        if s < 86400 { return "\(s / 3600)h\(s % 3600 / 60)m" }
        return "\(s / 86400)d\(s % 86400 / 3600)h"
    }

    private static func trim(_ v: Double) -> String {
        let r = (v * 1000).rounded() / 1000
        return r == r.rounded() ? String(Int(r)) : String(r)
    }
}

extension String {
    fileprivate func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.first == c { s = s.dropFirst() }
        while s.last == c { s = s.dropLast() }
        return String(s)
    }
}
