import ISCSIProtocol
import Logging
import NIOCore

/// One target a portal reported, with the portals it can be reached at.
public struct TargetListing: Codable, Sendable, Equatable {
  public struct PortalEntry: Codable, Sendable, Equatable {
    /// `host:port`, IPv6 in brackets, as iscsiadm prints it.
    public var address: String
    public var portalGroupTag: Int?
  }
  public var name: String
  public var portals: [PortalEntry]
}

public enum Discovery {
  /// A discovery session (RFC 7143 section 4.3): log in, SendTargets=All, log out.
  /// A target that reports no address for itself is reachable at the portal asked.
  public static func sendTargets(
    _ configuration: SessionConfiguration, on eventLoop: EventLoop, logger: Logger
  ) async throws -> [TargetListing] {
    var config = configuration
    config.login.targetName = nil
    config.login.sessionType = .discovery
    let session = try await ISCSISession.connect(config, on: eventLoop, logger: logger)
    do {
      let text = try await session.text([TextKeyValue("SendTargets", "All")]).get()
      await session.close()
      let records = try SendTargetsParser.parse(text)
      return records.map { record in
        var portals = record.portals.map {
          TargetListing.PortalEntry(
            address: Portal(host: $0.host, port: $0.port).description, portalGroupTag: $0.portalGroupTag)
        }
        if portals.isEmpty {
          portals = [TargetListing.PortalEntry(address: configuration.portal.description, portalGroupTag: 1)]
        }
        return TargetListing(name: record.targetName, portals: portals)
      }
    } catch {
      await session.close()
      throw error
    }
  }
}
