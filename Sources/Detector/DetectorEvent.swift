import Events
import NodeMap
import Wire

/// What a detector noticed or decided, with the numbers behind it (after Open MPI's detector, whose
/// every log line explains a decision): a false suspicion can be explained from these alone.
/// Durations are nanoseconds. Names are stable: the JSON log, tests and the event stream key on them.
public enum DetectorEvent: Event, Hashable {
    public enum ObserveReason: Hashable, Sendable {
        case start
        /// A new node came in between (or IDs moved): the old predecessor is still a member.
        case newPredecessor(was: IPAddress)
        /// The old predecessor left the ring (death, leave, removal).
        case ringRepair(left: IPAddress)
    }

    public enum ClearReason: Hashable, Sendable {
        /// A detector message (heartbeat, probe answer...) came from it.
        case message(MessageType)
        case probeAnswered(via: IPAddress?)
        /// The map shows it alive (a higher incarnation, an announce).
        case mapAlive(incarnation: UInt64)
        /// Any datagram from it was heard since the suspicion.
        case heard(ago: TimeSpan)
        /// The ring moved: this node no longer observes it.
        case noLongerObserved
    }

    public enum Accusation: String, Hashable, Sendable {
        case suspect, dead, leave, staleIncarnation = "stale_incarnation", impersonation
    }

    /// Starts observing `address` (its ring predecessor); its first heartbeat is due within `grace`.
    case observing(address: IPAddress, id: NodeID, reason: ObserveReason, grace: TimeSpan, members: Int)
    /// Stops observing anyone (this node left its own map, or no other member remains).
    case stoppedObserving(address: IPAddress, notMember: Bool)
    /// `address` sent `.watch`: it gets heartbeats too.
    case watchedBy(address: IPAddress)
    case suspected(
        address: IPAddress, id: NodeID, incarnation: UInt64, lastHeardAgo: TimeSpan?, deadlinePassedBy: TimeSpan,
        observedFor: TimeSpan, helpers: Int, confirmWindow: TimeSpan)
    case suspicionCleared(address: IPAddress, after: TimeSpan, reason: ClearReason)
    case declaredDead(
        address: IPAddress, id: NodeID, incarnation: UInt64, lastHeardAgo: TimeSpan?, suspectedFor: TimeSpan,
        rounds: Int, helpers: Int)
    /// The map refused the death (a higher incarnation arrived, or the node left meanwhile).
    case deathRefused(address: IPAddress, state: NodeState)
    case learnedDead(address: IPAddress, id: UInt16, incarnation: UInt64, from: IPAddress)
    case staleDeathNotice(address: IPAddress, incarnation: UInt64, known: UInt64)
    /// A tick came `pause` late (`gap` since the previous): the process was paused. While observing,
    /// the deadline moved by the pause and `graceLeft` remains.
    case lateTick(pause: TimeSpan, gap: TimeSpan, period: TimeSpan, observing: IPAddress?, graceLeft: TimeSpan?)
    /// A heartbeat was sent `late` after its due time: our observer may suspect us.
    case lateHeartbeat(late: TimeSpan, sequence: UInt32, period: TimeSpan)
    case probeAnswerForwarded(target: IPAddress, nonce: UInt32, to: IPAddress)
    /// `by` suspects this node at its own incarnation: answered with a heartbeat, not a refutation.
    case suspicionAnswered(by: IPAddress)
    /// The confirm window of `address` ended unanswered, but this node's own receive sockets dropped
    /// datagrams `lossAgo` ago (`drops` in all): its answers may have been among them, so it is
    /// probed for `grace` more before it is declared dead.
    case lossGrace(address: IPAddress, grace: TimeSpan, lossAgo: TimeSpan, drops: Int)
    /// A death was declared: the ring moved to `first`, and it and the `members - 1` members before
    /// it are probed together (directly and through `helpers`) for a confirm window: a run of
    /// adjacent failures is declared at once, not one node at a time.
    case runProbing(first: IPAddress, members: Int, helpers: Int)

    public var name: String {
        switch self {
        case .observing: "detector.observing"
        case .stoppedObserving: "detector.stopped_observing"
        case .watchedBy: "detector.watched_by"
        case .suspected: "detector.suspected"
        case .suspicionCleared: "detector.suspicion_cleared"
        case .declaredDead: "detector.declared_dead"
        case .deathRefused: "detector.death_refused"
        case .learnedDead: "detector.learned_dead"
        case .staleDeathNotice: "detector.stale_death_notice"
        case .lateTick: "detector.late_tick"
        case .lateHeartbeat: "detector.late_heartbeat"
        case .probeAnswerForwarded: "detector.probe_answer_forwarded"
        case .suspicionAnswered: "detector.suspicion_answered"
        case .lossGrace: "detector.loss_grace"
        case .runProbing: "detector.run_probing"
        }
    }

    public var level: LogLevel {
        switch self {
        case .watchedBy, .staleDeathNotice, .probeAnswerForwarded: .debug
        case .observing, .stoppedObserving, .suspicionCleared, .deathRefused, .learnedDead, .suspected,
            .suspicionAnswered, .runProbing:
            .info
        case .declaredDead, .lateTick, .lateHeartbeat, .lossGrace: .warning
        }
    }

    public func fields(into f: inout EventFields) {
        switch self {
        case .observing(let a, let id, let reason, let grace, let members):
            f.add("address", a)
            f.add("id", id.rawValue)
            switch reason {
            case .start: f.add("reason", "start")
            case .newPredecessor(let was):
                f.add("reason", "new_predecessor")
                f.add("previous", was)
            case .ringRepair(let left):
                f.add("reason", "ring_repair")
                f.add("previous", left)
            }
            f.add("grace", duration: grace.nanos)
            f.add("members", members)
        case .stoppedObserving(let a, let notMember):
            f.add("address", a)
            f.add("reason", notMember ? "not_a_member" : "no_other_member")
        case .watchedBy(let a):
            f.add("address", a)
        case .suspected(let a, let id, let inc, let heard, let passed, let observed, let helpers, let window):
            f.add("address", a)
            f.add("id", id.rawValue)
            f.add("incarnation", inc)
            f.add("last_heard_ago", duration: heard?.nanos)
            f.add("deadline_passed_by", duration: passed.nanos)
            f.add("observed_for", duration: observed.nanos)
            f.add("helpers", helpers)
            f.add("confirm_window", duration: window.nanos)
        case .suspicionCleared(let a, let after, let reason):
            f.add("address", a)
            f.add("after", duration: after.nanos)
            switch reason {
            case .message(let t): f.add("reason", "message"); f.add("message", "\(t)")
            case .probeAnswered(let via): f.add("reason", "probe_answered"); f.add("via", via)
            case .mapAlive(let inc): f.add("reason", "map_alive"); f.add("incarnation", inc)
            case .heard(let ago): f.add("reason", "heard"); f.add("heard_ago", duration: ago.nanos)
            case .noLongerObserved: f.add("reason", "no_longer_observed")
            }
        case .declaredDead(let a, let id, let inc, let heard, let suspected, let rounds, let helpers):
            f.add("address", a)
            f.add("id", id.rawValue)
            f.add("incarnation", inc)
            f.add("last_heard_ago", duration: heard?.nanos)
            f.add("suspected_for", duration: suspected.nanos)
            f.add("probe_rounds", rounds)
            f.add("helpers", helpers)
        case .deathRefused(let a, let state):
            f.add("address", a)
            f.add("state", "\(state)")
        case .learnedDead(let a, let id, let inc, let from):
            f.add("address", a)
            f.add("id", id)
            f.add("incarnation", inc)
            f.add("from", from)
        case .staleDeathNotice(let a, let inc, let known):
            f.add("address", a)
            f.add("incarnation", inc)
            f.add("known_incarnation", known)
        case .lateTick(let pause, let gap, let period, let observing, let grace):
            f.add("late_by", duration: pause.nanos)
            f.add("gap", duration: gap.nanos)
            f.add("period", duration: period.nanos)
            f.add("observing", observing)
            f.add("grace_left", duration: grace?.nanos)
        case .lateHeartbeat(let late, let seq, let period):
            f.add("late_by", duration: late.nanos)
            f.add("sequence", UInt64(seq))
            f.add("period", duration: period.nanos)
        case .probeAnswerForwarded(let t, let nonce, let to):
            f.add("target", t)
            f.add("nonce", UInt64(nonce))
            f.add("to", to)
        case .suspicionAnswered(let by):
            f.add("by", by)
        case .lossGrace(let a, let grace, let ago, let drops):
            f.add("address", a)
            f.add("grace", duration: grace.nanos)
            f.add("loss_ago", duration: ago.nanos)
            f.add("local_drops", drops)
        case .runProbing(let first, let members, let helpers):
            f.add("first", first)
            f.add("members", members)
            f.add("helpers", helpers)
        }
    }

    public var text: String {
        let d = { (s: TimeSpan) in DurationText.format(s.nanos) }
        switch self {
        case .observing(let a, let id, let reason, let grace, let members):
            let why =
                switch reason {
                case .start: "start"
                case .newPredecessor(let was): "new predecessor (was \(was))"
                case .ringRepair(let left): "ring repair (\(left) left the ring)"
                }
            return "observing \(a) (id \(id)), \(why): first heartbeat due within \(d(grace)) (\(members) members)"
        case .stoppedObserving(let a, let notMember):
            return notMember
                ? "this node is not a member of its map: stops observing \(a)" : "no other member: stops observing \(a)"
        case .watchedBy(let a):
            return "\(a) watches this node: sending it heartbeats"
        case .suspected(let a, let id, let inc, let heard, let passed, let observed, let helpers, let window):
            let h = heard.map { "last heartbeat \(d($0)) ago" } ?? "no heartbeat yet"
            return "suspect \(a) (id \(id), incarnation \(inc)): \(h), deadline passed by \(d(passed)), observed for "
                + "\(d(observed)); probing directly and through \(helpers) helper(s) for \(d(window))"
        case .suspicionCleared(let a, let after, let reason):
            let why =
                switch reason {
                case .message(let t): "\(t) from it"
                case .probeAnswered(let via): "probe answered through \(via.map { "helper \($0)" } ?? "direct probe")"
                case .mapAlive(let inc): "map shows it alive at incarnation \(inc)"
                case .heard(let ago): "heard from it \(d(ago)) ago"
                case .noLongerObserved: "no longer observed by this node"
                }
            return "suspicion of \(a) cleared after \(d(after)): \(why)"
        case .declaredDead(let a, let id, let inc, let heard, let suspected, let rounds, let helpers):
            let h = heard.map { "last heartbeat \(d($0)) ago" } ?? "never heard"
            return "declared \(a) (id \(id), incarnation \(inc)) dead: \(h), suspected \(d(suspected)) ago, "
                + "\(rounds) probe round(s) through \(helpers) helper(s) unanswered"
        case .deathRefused(let a, let state):
            return "not declaring \(a) dead: the map refused (state \(state))"
        case .learnedDead(let a, let id, let inc, let from):
            return "learned from \(from) that \(a) (id \(id), incarnation \(inc)) is dead"
        case .staleDeathNotice(let a, let inc, let known):
            return "ignoring stale death notice for \(a) (incarnation \(inc) < \(known))"
        case .lateTick(let pause, let gap, let period, let observing, let grace):
            if let o = observing {
                return "tick late by \(d(pause)) (\(d(gap)) since the previous tick, period \(d(period))): process "
                    + "paused? not suspecting \(o) on this tick; its deadline extended by \(d(pause)), grace left "
                    + "\(d(grace ?? .zero))"
            }
            return "tick late by \(d(pause)) (\(d(gap)) since the previous tick): process paused?"
        case .lateHeartbeat(let late, let seq, let period):
            return "missed send deadline by \(d(late)) (heartbeat \(seq), period \(d(period))): our observer may "
                + "suspect this node"
        case .probeAnswerForwarded(let t, let nonce, let to):
            return "forwarded probe answer of \(t) (nonce \(nonce)) to \(to)"
        case .suspicionAnswered(let by):
            return "\(by) suspects this node: answered with a heartbeat"
        case .lossGrace(let a, let grace, let ago, let drops):
            return "not declaring \(a) dead yet: this node's own sockets dropped datagrams \(d(ago)) ago (\(drops) "
                + "in all), its answers may have been among them; probing it \(d(grace)) more"
        case .runProbing(let first, let members, let helpers):
            return "probing \(first) and the \(members - 1) member(s) before it together, directly and through "
                + "\(helpers) helper(s): a run of adjacent failures is declared at once"
        }
    }
}
