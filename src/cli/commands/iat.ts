// `iat create`: an initial access token for RFC 7591 dynamic registration at /reg. Single use,
// expiring, optionally restricted to a registration template. Shown only this once; the audit event
// carries its pseudonym, never the value.
import { loadConfig } from '../../config.ts';
import {
  createInitialAccessToken, DEFAULT_IAT_TTL_SECONDS, InitialAccessTokenError, isRegistrationTemplate, MAX_IAT_TTL_SECONDS,
  REGISTRATION_TEMPLATE_NAMES,
} from '../../oidc/registration.ts';
import {
  CLI_AUDIT, CliError, createAuditLog, createProviderContext, expectPositionals, loadKeyMaterial, parseCommandArgs,
  UsageError, withDatabase, type Command,
} from '../context.ts';

const OPTIONS = {
  template: { type: 'string' },
  ttl: { type: 'string' },
} as const;

export const iatCreateCommand: Command = {
  name: 'iat create',
  synopsis: '[--template NAME] [--ttl SECONDS]',
  description: [
    'Create an initial access token for dynamic client registration (RFC 7591, POST /reg with',
    '`Authorization: Bearer <token>`). It registers one client, once, before it expires; the answer',
    'holds the client\'s secret (shown once) and a registration access token to read, update or delete',
    'that registration (RFC 7592). Without a template the registrant may ask for anything `client add`',
    'accepts except break-glass: give such a token only to parties you would register yourself.',
  ],
  options: [
    ['--template NAME', `restrict the registration to a template: ${REGISTRATION_TEMPLATE_NAMES.join(', ')}`],
    ['--ttl SECONDS', `lifetime, 1-${MAX_IAT_TTL_SECONDS} (default ${DEFAULT_IAT_TTL_SECONDS})`],
  ],
  output: '{"initialAccessToken":"...","expiresAt":"ISO 8601","template":"NAME"|null} (the token is shown only this once)',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, OPTIONS);
    expectPositionals(this.name, positionals, []);
    let ttlSeconds = DEFAULT_IAT_TTL_SECONDS;
    if (values.ttl !== undefined) {
      if (!/^\d{1,9}$/.test(values.ttl)) throw new UsageError(`${this.name}: --ttl '${values.ttl}' is not a whole number of seconds`);
      ttlSeconds = Number(values.ttl);
      if (ttlSeconds < 1 || ttlSeconds > MAX_IAT_TTL_SECONDS) throw new CliError(`invalid --ttl: from 1 to ${MAX_IAT_TTL_SECONDS} seconds`);
    }
    const { template } = values;
    if (template !== undefined && !isRegistrationTemplate(template)) {
      throw new CliError(`unknown template '${template.slice(0, 80)}' (known: ${REGISTRATION_TEMPLATE_NAMES.join(', ')})`);
    }
    const config = loadConfig();
    const material = await loadKeyMaterial(config);
    return withDatabase(config, async (db) => {
      const { provider } = await createProviderContext(config, db, material);
      const audit = await createAuditLog(db, material);
      try {
        return await createInitialAccessToken(provider, audit, { template, ttlSeconds, rule: CLI_AUDIT.rule, details: { ...CLI_AUDIT.details } });
      } catch (err) {
        if (err instanceof InitialAccessTokenError) throw new CliError(err.message);
        throw err;
      }
    });
  },
};
