import Discovery
import Foundation
import NodeMap
import Testing

/// docs/PROTOCOL.md states the anti-entropy and wave defaults in prose ("Anti-entropy"): each
/// figure there must be the one `DiscoverySettings.default` holds, so that the doc cannot drift from
/// the daemon (one source for every default; the detector's table has DetectorDocTests).
struct ProtocolDocTests {
    static func protocolDoc() -> String? {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        let path = parts.joined(separator: "/") + "/docs/PROTOCOL.md"
        // Prose wraps anywhere, and list items indent their next lines: compare with every run of
        // white space as one space.
        return (try? String(contentsOfFile: path, encoding: .utf8))?.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }

    @Test func antiEntropyProseMatchesTheDefaults() throws {
        let doc = try #require(Self.protocolDoc())
        let d = DiscoverySettings.default
        func ms(_ t: TimeSpan) -> UInt64 { t.nanos / 1_000_000 }
        func s(_ t: TimeSpan) -> UInt64 { t.nanos / 1_000_000_000 }
        let expected = [
            "(timeout \(ms(d.syncTimeout)) ms)",
            "\(Int(d.syncAnswerRate)) requests and offers per second at most",
            "at most \(d.syncReplyDatagrams) datagrams (flag `more`",
            "at most \(d.syncPushDatagrams) datagrams per answer datagram",
            "≥ max(\(d.influxMinJoins), members/\(d.influxDivisor)) joins within \(s(d.influxWindow)) s",
            "When no join came for \(ms(d.influxQuiet)) ms",
            "within [100 ms, \(ms(d.waveSpread)) ms]",
            "at most one wave per \(s(d.waveGap)) s",
            "hears \(d.influxMinJoins) within \(s(d.influxWindow)) s outside a join influx",
            "≤ \(Int(d.syncAnswerRate)) answers/offers per second; an answer ≤ \(d.syncReplyDatagrams) datagrams, a push ≤ \(d.syncPushDatagrams) per answer datagram",
            "≤ \(d.waveCopies) wave announces per \(s(d.waveGap)) s",
            // A newcomer's pull (the join, and the bounds line).
            "asked again after \(ms(d.pullRetry)) ms, not after the \(ms(d.syncTimeout)) ms of a heartbeat sync",
            "after \(d.pullMisses) pages in a row asked again without a datagram of the answer",
            "or after \(s(d.pullLimit)) s; then heartbeat syncs take over",
            "a page asked at most every \(ms(d.pullRetry)) ms, ≤ \(d.pullMisses) times in a row unanswered, for ≤ \(s(d.pullLimit)) s",
        ]
        for e in expected { #expect(doc.contains(e), "docs/PROTOCOL.md does not say: \(e)") }
        // "announces three times": the doc words the copy count.
        #expect(d.waveCopies == 3 && doc.contains("influx announces three times"))
    }
}
