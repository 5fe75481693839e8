/// Time in the protocol cores: an `Instant` on the caller's monotonic clock (the daemon's
/// CLOCK_MONOTONIC, the simulator's virtual time) and a `TimeSpan` between two instants, both in
/// nanoseconds. Distinct types, so that a deadline cannot be passed where a timeout is expected;
/// arithmetic saturates instead of trapping (a core must never trap on time).
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanos: UInt64

    public init(nanos: UInt64) { self.nanos = nanos }

    public static let zero = Instant(nanos: 0)
    /// Later than any instant a run reaches: "no deadline".
    public static let distantFuture = Instant(nanos: .max)

    public static func < (a: Instant, b: Instant) -> Bool { a.nanos < b.nanos }
    public static func + (a: Instant, d: TimeSpan) -> Instant {
        let (v, o) = a.nanos.addingReportingOverflow(d.nanos)
        return Instant(nanos: o ? .max : v)
    }
    public static func += (a: inout Instant, d: TimeSpan) { a = a + d }
    public static func - (a: Instant, d: TimeSpan) -> Instant { Instant(nanos: a.nanos > d.nanos ? a.nanos - d.nanos : 0) }
    /// The span from `b` to `a` (zero when `b` is later).
    public static func - (a: Instant, b: Instant) -> TimeSpan { TimeSpan(nanos: a.nanos > b.nanos ? a.nanos - b.nanos : 0) }

    public var description: String { "@\(nanos)ns" }
}

public struct TimeSpan: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanos: UInt64

    public init(nanos: UInt64) { self.nanos = nanos }

    public static let zero = TimeSpan(nanos: 0)
    public static func nanoseconds(_ n: UInt64) -> TimeSpan { TimeSpan(nanos: n) }
    public static func milliseconds(_ n: UInt64) -> TimeSpan { TimeSpan(nanos: n.multipliedReportingOverflow(by: 1_000_000).partialValue) }
    public static func seconds(_ n: UInt64) -> TimeSpan { TimeSpan(nanos: n.multipliedReportingOverflow(by: 1_000_000_000).partialValue) }

    public static func < (a: TimeSpan, b: TimeSpan) -> Bool { a.nanos < b.nanos }
    public static func + (a: TimeSpan, b: TimeSpan) -> TimeSpan {
        let (v, o) = a.nanos.addingReportingOverflow(b.nanos)
        return TimeSpan(nanos: o ? .max : v)
    }
    public static func - (a: TimeSpan, b: TimeSpan) -> TimeSpan { TimeSpan(nanos: a.nanos > b.nanos ? a.nanos - b.nanos : 0) }
    public static func * (a: TimeSpan, k: UInt64) -> TimeSpan {
        let (v, o) = a.nanos.multipliedReportingOverflow(by: k)
        return TimeSpan(nanos: o ? .max : v)
    }
    public static func * (k: UInt64, a: TimeSpan) -> TimeSpan { a * k }
    public static func / (a: TimeSpan, k: UInt64) -> TimeSpan { TimeSpan(nanos: k == 0 ? .max : a.nanos / k) }
    /// How many times `b` fits in `a`.
    public static func / (a: TimeSpan, b: TimeSpan) -> UInt64 { b.nanos == 0 ? .max : a.nanos / b.nanos }

    public var milliseconds: Double { Double(nanos) / 1e6 }
    public var seconds: Double { Double(nanos) / 1e9 }
    public var description: String { "\(nanos)ns" }
}

/// A literal is nanoseconds (`now: 0` in tests); a `UInt64` variable still does not pass for a time.
extension Instant: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: UInt64) { self.nanos = value }
}

extension TimeSpan: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: UInt64) { self.nanos = value }
}
