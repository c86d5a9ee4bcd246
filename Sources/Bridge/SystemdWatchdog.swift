import Dispatch
import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix

/// systemd's service watchdog (`WatchdogSec=` in the unit): WATCHDOG=1 every half period,
/// but only once every event loop of the group has run a task since the last one. A loop
/// that is stuck (a blocking call, a livelock) stops the pings, so systemd aborts and
/// restarts the process; the restarted attach takes the device over and the mount stays.
/// The timer runs on a dispatch queue of its own, so a stuck loop cannot ping for itself.
public final class SystemdWatchdog {
  private let timer: DispatchSourceTimer

  /// Half of `$WATCHDOG_USEC` when systemd watches this process ($WATCHDOG_PID unset or
  /// ours), else nil.
  public static func period(environment: [String: String] = ProcessInfo.processInfo.environment) -> TimeAmount? {
    guard let text = environment["WATCHDOG_USEC"], let usec = Int64(text), usec > 0 else { return nil }
    if let pid = environment["WATCHDOG_PID"], Int32(pid) != getpid() { return nil }
    return .microseconds(max(usec / 2, 1))
  }

  /// Starts pinging when systemd asked for it; nil otherwise.
  public static func start(group: MultiThreadedEventLoopGroup = .singleton) -> SystemdWatchdog? {
    guard let period = period() else { return nil }
    return SystemdWatchdog(group: group, period: period)
  }

  init(group: MultiThreadedEventLoopGroup, period: TimeAmount) {
    let loops = Array(group.makeIterator())
    timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "lunbridge.watchdog"))
    let interval = DispatchTimeInterval.nanoseconds(Int(period.nanoseconds))
    timer.schedule(deadline: .now(), repeating: interval, leeway: .milliseconds(100))
    timer.setEventHandler {
      let turns = loops.map { $0.submit {} }
      // Pings when every loop has answered; a loop stuck past the next tick leaves this
      // one pending and every later one too, and systemd's deadline passes.
      EventLoopFuture.andAllSucceed(turns, on: loops[0]).whenSuccess {
        SystemdNotify.send("WATCHDOG=1")
      }
    }
    timer.resume()
  }

  public func stop() {
    timer.cancel()
  }
}
