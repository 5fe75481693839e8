import Events
import NodeMap

extension DurationText {
    /// A span as operators write it ("150ms", "3s").
    public static func format(_ d: TimeSpan) -> String { format(d.nanos) }
    /// Parses "150ms", "3s"... into a span (see `parse`).
    public static func span(_ text: String) throws -> TimeSpan { TimeSpan(nanos: try parse(text)) }
}
