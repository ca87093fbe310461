// The cdc-gateway wire protocol (docs/protocol.md), as TypeScript types. Types only: nothing
// here exists at run time. test/types.test.mjs checks every example in schemas/examples
// against these types, so a change of the schemas that the types miss fails the tests.

/** Correlation id of a client request, echoed in the reply. */
export type RequestId = string | number;

/** A resume position: `"<source topic>:<partition>"` (or a bare partition, from gateways that
 * read one source topic and predate source topics in positions) -> source offset. */
export type Position = Record<string, number>;

/** A row as the source sent it. */
export type Row = Record<string, unknown>;

/** What happened to a row. */
export type RowOperation = "insert" | "update" | "delete" | "snapshot";

/** One change of one row (protocol section 1). */
export interface RowEvent<R = Row> {
  entity_type: string;
  entity_id: string;
  operation: RowOperation;
  /** The row after the change; null for deletes. */
  data: R | null;
  /** The row before the change, when the source sends it. */
  before: R | null;
  /** RFC 3339, from the source. */
  timestamp: string;
}

/** Every row of an entity went away (a truncate has no id). */
export interface TruncateEvent {
  entity_type: string;
  entity_id?: null;
  operation: "truncate";
  data: null;
  before: null;
  timestamp: string;
}

/** The normalized change event, the `payload` of a data message. */
export type ChangeEvent<R = Row> = RowEvent<R> | TruncateEvent;

/** One event delivered on one subscribed topic: a live event (possibly a `leave`), or a
 * snapshot row. */
export type DataMessage<R = Row> = LiveData<R> | SnapshotRow<R>;

/** What every data message carries. */
export interface DataFields<R = Row> {
  type: "data";
  topic: string;
  payload: ChangeEvent<R>;
  /** The Kafka topic of the source record. */
  source: string;
  /** Kafka partition of the source record. */
  partition: number;
  /** Kafka offset of the source record. */
  offset: number;
  /** RFC 3339: when the gateway sent it. */
  timestamp: string;
}

/** A live event. */
export interface LiveData<R = Row> extends DataFields<R> {
  snapshot?: never;
  /** The update moved the row out of the subscription's filters: drop the row (section 7). */
  leave?: true;
}

/** A row of the snapshot that precedes live events (protocol section 7): the last event the
 * gateway knows of the row. */
export interface SnapshotRow<R = Row> extends DataFields<R> {
  snapshot: true;
  leave?: never;
}

/** The snapshot rows of a subscription have all arrived; every later event is live. */
export interface SyncedMessage {
  type: "synced";
  topic: string;
}

export interface AuthAck {
  type: "ack";
  action: "auth";
  id?: RequestId;
}

export interface SubscribeAck {
  type: "ack";
  action: "subscribe";
  topic: string;
  /** Where the subscription starts, for every partition the gateway reads. */
  position: Position;
  /** Present when the subscribe carried `since`: whether the missed events follow. */
  recovered?: boolean;
  /** Present when the subscribe asked for a snapshot. */
  snapshot?: { rows: number; complete: boolean };
  id?: RequestId;
}

export interface UnsubscribeAck {
  type: "ack";
  action: "unsubscribe";
  topic: string;
  id?: RequestId;
}

export type Ack = AuthAck | SubscribeAck | UnsubscribeAck;

/** Error codes of protocol section 3. */
export type ErrorCode =
  | "INVALID_MESSAGE"
  | "UNKNOWN_ACTION"
  | "INVALID_TOPIC"
  | "INVALID_FILTER"
  | "FORBIDDEN"
  | "TOO_MANY_SUBSCRIPTIONS"
  | "RATE_LIMITED"
  | "BACKLOG_FULL"
  | "NOT_SUBSCRIBED"
  | "UNAUTHENTICATED";

export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  message: string;
  id?: RequestId;
  /** The topic concerned, on errors about a topic. */
  topic?: string;
}

/** Application-level heartbeat; the client answers `{"action":"pong"}`. */
export interface PingMessage {
  type: "ping";
  /** Server time, epoch milliseconds. */
  timestamp: number;
}

export interface PongMessage {
  type: "pong";
  timestamp: number | string;
  id?: RequestId;
}

/** An extension of cdc-gateway: source records were skipped unread (the broker deleted them
 * before the gateway read them), so the subscription to `topic` may have missed events. It
 * comes after the events before the gap and before those after it. */
export interface ResetMessage {
  type: "reset";
  topic: string;
  reason: "records_lost";
  /** Kafka topic, partition and offsets (inclusive) of the records skipped. */
  source: string;
  partition: number;
  from: number;
  to: number;
}

/** Who watches a topic over every replica (protocol section 10): the answer to a
 * `presence` request, or a change sent to a subscription made with `presence: true` (then
 * with `joins` and `leaves`), at most one a second. `users` (token subjects) come under
 * `--auth jwt` only. */
export interface PresenceMessage {
  type: "presence";
  topic: string;
  subscribers: number;
  users?: string[];
  joins?: string[];
  leaves?: string[];
  id?: RequestId;
}

/** Every text frame the gateway sends on /ws. */
export type ServerMessage =
  | DataMessage
  | SyncedMessage
  | Ack
  | ErrorMessage
  | PingMessage
  | PongMessage
  | ResetMessage
  | PresenceMessage;

/** A value a filter compares with. */
export type Scalar = string | number | boolean | null;

/** Filter operators (protocol section 4); every one given must hold. */
export interface FilterOperators {
  eq?: Scalar;
  ne?: Scalar;
  gt?: number | string;
  gte?: number | string;
  lt?: number | string;
  lte?: number | string;
  in?: readonly Scalar[];
  nin?: readonly Scalar[];
  exists?: boolean;
}

/** Equal to a scalar, equal to one of an array, or every operator holds. */
export type FilterValue = Scalar | readonly Scalar[] | FilterOperators;

/** Dotted path (`operation`, `data.status`, `row.tenant` ...) -> condition; all must hold. */
export type Filters = Record<string, FilterValue>;

export interface AuthRequest {
  action: "auth";
  token: string;
  id?: RequestId;
}

export interface SubscribeRequest {
  action: "subscribe";
  topic: string;
  filters?: Filters;
  since?: Position;
  snapshot?: boolean;
  /** Also receive presence messages of the topic (protocol section 10). */
  presence?: boolean;
  id?: RequestId;
}

/** Who watches `topic` (protocol section 10): answered by a {@link PresenceMessage}. */
export interface PresenceRequest {
  action: "presence";
  topic: string;
  id?: RequestId;
}

export interface UnsubscribeRequest {
  action: "unsubscribe";
  topic: string;
  id?: RequestId;
}

export interface PingRequest {
  action: "ping";
  timestamp?: number | string;
  id?: RequestId;
}

export interface PongRequest {
  action: "pong";
  id?: RequestId;
}

/** Every text frame a client sends on /ws. */
export type ClientMessage =
  | AuthRequest
  | SubscribeRequest
  | UnsubscribeRequest
  | PresenceRequest
  | PingRequest
  | PongRequest;
