import ArgumentParser
import Cluster
import Detector
import Discovery
import NodeMap

/// The protocol options that `discd` and `discd simulate` share, declared once: both commands
/// describe the same daemon, with the defaults of `DetectorSettings.default` and
/// `DiscoverySettings.default` (the one source of every default).
struct ProtocolOptions: ParsableArguments {
    static let detectorDefaults = DetectorSettings.default
    static let discoveryDefaults = DiscoverySettings.default
    static let presetNames = DetectorSettings.presets.map(\.name).joined(separator: ", ")

    @Option(help: ArgumentHelp("Detector timing preset: \(presetNames); --period and the like override it.", valueName: "name"))
    var preset = "lan"

    @Option(help: "Heartbeat period η (default: \(DurationText.format(detectorDefaults.period))).")
    var period: String?

    @Option(help: "Heartbeat timeout δ, at least 3η (default: \(DurationText.format(detectorDefaults.timeout))).")
    var timeout: String?

    @Option(help: "Indirect probers asked to confirm a suspicion, 0-16 (default: \(detectorDefaults.confirmations)).")
    var confirmations: Int?

    @Option(
        name: .customLong("confirm-window"),
        help: "How long probes may take before a suspect is declared dead (default: \(DurationText.format(detectorDefaults.confirmWindow))).")
    var confirmWindow: String?

    @Option(
        name: .customLong("announce-interval"),
        help: "Announce interval of a small cluster; it stretches with size (default: \(DurationText.format(discoveryDefaults.baseInterval))).")
    var announceInterval: String?

    @Flag(name: .customLong("no-detector"), help: "Disable the heartbeat failure detector (discovery expiry still declares silent nodes dead).")
    var noDetector = false

    func validate() throws {
        guard DetectorSettings.presets.contains(where: { $0.name == preset }) else {
            throw ValidationError("--preset must be one of \(Self.presetNames)")
        }
        if let k = confirmations, !(0...16).contains(k) { throw ValidationError("--confirmations must be 0-16") }
    }

    /// The detector settings (nil with --no-detector), checked by the core type.
    func detector(eventLevel: LogLevel) throws -> DetectorSettings? {
        guard !noDetector else { return nil }
        let base = DetectorSettings.presets.first { $0.name == preset }?.settings ?? .default
        return try DetectorSettings(
            period: try period.map(DurationText.span) ?? base.period,
            timeout: try timeout.map(DurationText.span) ?? base.timeout,
            confirmations: confirmations ?? base.confirmations,
            confirmWindow: try confirmWindow.map(DurationText.span) ?? base.confirmWindow,
            startupSlack: base.startupSlack, eventLevel: eventLevel)
    }

    /// The discovery settings, from the defaults with this command's announce interval.
    func discovery(relay: Bool = false, aggregateRate: Double? = nil, purgeAfter: TimeSpan? = nil) throws -> DiscoverySettings {
        let d = Self.discoveryDefaults
        return try DiscoverySettings(
            baseInterval: try announceInterval.map(DurationText.span) ?? d.baseInterval,
            aggregateRate: aggregateRate ?? d.aggregateRate, expiryFactor: d.expiryFactor,
            purgeAfter: purgeAfter ?? d.purgeAfter, relay: relay, seenCacheSize: d.seenCacheSize)
    }
}
