//! WebSocket close codes the gateway sends (protocol section 3), with their reasons.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    GoingAway,
    Policy,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    TooBig,
    /// 4001: the token is invalid.
    Unauthorized,
    /// 4001: the token expired and no fresh one came.
    TokenExpired,
    /// 4002: no token within the auth timeout.
    AuthTimeout,
    IdleTimeout,
    SlowConsumer,
    /// A code the client sent, echoed back.
    Other(u16),
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Unauthorized | CloseCode::TokenExpired => 4001,
            CloseCode::AuthTimeout => 4002,
            CloseCode::IdleTimeout => 4003,
            CloseCode::SlowConsumer => 4004,
            CloseCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> Self {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            4001 => CloseCode::Unauthorized,
            4002 => CloseCode::AuthTimeout,
            4003 => CloseCode::IdleTimeout,
            4004 => CloseCode::SlowConsumer,
            other => CloseCode::Other(other),
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal | CloseCode::Other(_) => "",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::InvalidPayload => "text is not valid UTF-8",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Unauthorized => "invalid token",
            CloseCode::TokenExpired => "token expired",
            CloseCode::AuthTimeout => "no auth within the auth timeout",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::SlowConsumer => "slow consumer",
        }
    }
}
